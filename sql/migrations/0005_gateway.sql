-- The OpenAI-compatible gateway: time to first token of streamed requests, and a conversation's earlier
-- turns found by (conversation id, user) to keep later turns on the model they used.
ALTER TABLE requests ADD COLUMN ttft_ms double precision;
CREATE INDEX requests_conversation_idx ON requests ((metadata->>'conversation_id'), user_id)
    WHERE metadata ? 'conversation_id';
