-- One savings definition (core/savings.py) read in one pass over requests: the returned answer's and the
-- always-expensive model's correctness, what the attempts whose answers were not returned cost
-- (escalation overhead), and whether a replayed prompt had a recorded answer (false: the stub answered it,
-- ungraded). Which router decided is requests.router_version (0007).

ALTER TABLE requests
    ADD COLUMN correct                boolean,
    ADD COLUMN counterfactual_correct boolean,
    ADD COLUMN overhead_micro_usd     bigint NOT NULL DEFAULT 0,
    ADD COLUMN recorded               boolean;

-- Spend per billed model and its trend, read from attempts.
CREATE INDEX request_attempts_started_model_cost_idx ON request_attempts (started_at, model) INCLUDE (cost_micro_usd, status);
