-- Accepted means recorded: the API writes a ledger row before it answers 202 (or waits in /generate),
-- a reconciler republishes accepted requests that have no requests row, and marks them expired after
-- their deadline. Workers write heartbeats with the partitions they hold, for readiness checks.

CREATE TABLE accepted_requests (
    request_id        text PRIMARY KEY,
    accepted_at       timestamptz NOT NULL DEFAULT now(),
    deadline_at       timestamptz NOT NULL,
    message           jsonb NOT NULL,            -- the PromptMessage as published (republished as is)
    state             text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'recorded', 'expired')),
    republished       integer NOT NULL DEFAULT 0,
    last_published_at timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz
);

CREATE INDEX accepted_requests_pending_idx ON accepted_requests (last_published_at) WHERE state = 'pending';

-- A request that reached its deadline unanswered is recorded as expired (its one terminal row).
ALTER TABLE requests DROP CONSTRAINT requests_status_check;
ALTER TABLE requests ADD CONSTRAINT requests_status_check CHECK (status IN ('ok', 'failed', 'expired'));

CREATE TABLE worker_heartbeats (
    worker_id   text PRIMARY KEY,
    app_id      text NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL,
    beat_at     timestamptz NOT NULL,
    -- {"topic": [partition, ...]} held by this worker's consumer now.
    assignment  jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- Every paid call, written as it starts and updated when it ends, keyed by (request, delivery, attempt number):
-- a request redelivered after a crash shows its second call here, with its cost, and a call cut off by the
-- crash stays 'started'. request_attempts holds the attempts of the answer that was recorded.
CREATE TABLE model_calls (
    request_id     text NOT NULL,
    delivery       text NOT NULL,                 -- one handling of one routed message by one worker
    attempt_no     integer NOT NULL,
    model          text NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    status         text NOT NULL DEFAULT 'started' CHECK (status IN ('started', 'ok', 'error', 'rejected')),
    tokens_in      integer,
    tokens_out     integer,
    cost_micro_usd bigint,
    PRIMARY KEY (request_id, delivery, attempt_no)
);

CREATE INDEX model_calls_started_idx ON model_calls (started_at);

-- A fallback refused by the cost cap is recorded on the failed attempt as next_reason_kind 'cost_cap'.
ALTER TABLE request_attempts DROP CONSTRAINT IF EXISTS request_attempts_next_reason_kind_check;
ALTER TABLE request_attempts ADD CONSTRAINT request_attempts_next_reason_kind_check CHECK (next_reason_kind IN
    ('refusal', 'short', 'length', 'verifier', 'error', 'timeout', 'circuit_open', 'cost_cap'));
