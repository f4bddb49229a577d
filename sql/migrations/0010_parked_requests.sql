-- Provider-outage parking: a routed request whose allowed models are all down (or whose only fallback is beyond
-- the cost cap) waits here, off the consumer, until its next retry time; a sweeper in every worker publishes
-- it back to its route topic then. It fails for good only when no retry fits before its deadline.
-- One row per request: a request parked again updates its row; a released row stays as its parking record.

CREATE TABLE parked_requests (
    request_id    text PRIMARY KEY,
    target_model  text NOT NULL,                 -- the route topic it goes back to (route.<target_model>)
    routed        jsonb NOT NULL,                -- the RoutedMessage, with the attempts made so far
    parks         integer NOT NULL,              -- times parked (the backoff's attempt number)
    first_parked_at timestamptz NOT NULL DEFAULT now(),
    parked_at     timestamptz NOT NULL DEFAULT now(),
    not_before    timestamptz NOT NULL,          -- next retry time
    deadline_at   timestamptz NOT NULL,
    last_error    text,
    released_at   timestamptz                    -- NULL while parked; set when published back to its route topic
);

CREATE INDEX parked_requests_due_idx ON parked_requests (not_before) WHERE released_at IS NULL;
CREATE INDEX parked_requests_released_idx ON parked_requests (released_at) WHERE released_at IS NOT NULL;
