-- Online experiments (A/B arms), the arm and router version on each request, and feedback grades.

-- One experiment assigns a share of traffic to each arm by a salted hash of (tenant, user or conversation).
-- Workers re-read this table every ROUTER_EXPERIMENTS_REFRESH_S seconds: no restart to change or end one.
CREATE TABLE experiments (
    experiment_id text PRIMARY KEY CHECK (experiment_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    tenant        text,                              -- NULL: every tenant without an experiment of its own
    salt          text NOT NULL,
    unit          text NOT NULL DEFAULT 'user' CHECK (unit IN ('user', 'conversation', 'request')),
    -- [{"name": "control", "kind": "control", "share": 0.1, "model": "big"},
    --  {"name": "router", "kind": "router", "share": 0.1},
    --  {"name": "candidate", "kind": "artifact", "share": 0.1, "artifact": "/path/to/artifact"}]
    arms          jsonb NOT NULL,
    description   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz
);

-- At most one running experiment per tenant (and one for every tenant).
CREATE UNIQUE INDEX experiments_one_running_per_tenant ON experiments ((coalesce(tenant, ''))) WHERE ended_at IS NULL;

ALTER TABLE requests
    ADD COLUMN experiment_id  text,
    ADD COLUMN arm            text,
    ADD COLUMN router_version text;   -- which policy / artifact decided: "artifact:<sha256 prefix>" or "heuristic:<policy>"

CREATE INDEX requests_experiment_arm_idx ON requests (experiment_id, arm) WHERE experiment_id IS NOT NULL;

-- Feedback: several grades per request, one per feedback source (user thumbs, rubric, grader, replay).
-- ``source`` keeps its meaning (the dataset a replayed prompt came from); the grade's origin is ``feedback_source``.
ALTER TABLE model_eval
    ADD COLUMN feedback_source text NOT NULL DEFAULT 'replay' CHECK (feedback_source ~ '^[A-Za-z0-9._:-]{1,64}$'),
    ADD COLUMN human_score     smallint CHECK (human_score BETWEEN 1 AND 5),
    ADD COLUMN pass_fail       boolean,
    ADD COLUMN notes           text,
    ADD COLUMN tenant          text;

ALTER TABLE model_eval DROP CONSTRAINT model_eval_pkey;
ALTER TABLE model_eval ADD PRIMARY KEY (request_id, feedback_source);
