-- Structured escalation and fallback records: the model called next and the kind of reason, as columns
-- that the dashboard and the repository read, instead of parsing the prose in next_reason.

ALTER TABLE request_attempts
    ADD COLUMN next_model       text,
    ADD COLUMN next_reason_kind text CHECK (next_reason_kind IN
        ('refusal', 'short', 'length', 'verifier', 'error', 'timeout', 'circuit_open'));

-- Rows written before this migration carry only the prose: "escalate to <model>: <why>" or
-- "fallback to <model>: <error>". Read it once here, so every reader can rely on the columns.
UPDATE request_attempts
SET next_model = substring(next_reason from '^\w+ to ([^:]+):'),
    next_reason_kind = CASE
        WHEN status = 'rejected' AND next_reason ~ ': refusal$' THEN 'refusal'
        WHEN status = 'rejected' AND next_reason ~ ': (empty answer|answer shorter than|too_short)' THEN 'short'
        WHEN status = 'rejected' AND next_reason ~ ': (finish_reason=length|length)' THEN 'length'
        WHEN status = 'rejected' THEN 'verifier'
        WHEN next_reason ~ ': circuit open' THEN 'circuit_open'
        WHEN next_reason ~* 'timeout' THEN 'timeout'
        ELSE 'error'
    END
WHERE next_reason IS NOT NULL AND next_model IS NULL;

CREATE INDEX request_attempts_next_kind_idx ON request_attempts (next_reason_kind) WHERE next_reason_kind IS NOT NULL;
