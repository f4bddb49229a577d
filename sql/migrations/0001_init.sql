-- Requests, their attempts, cost rates and evaluation outcomes.

CREATE TABLE requests (
    request_id                    text PRIMARY KEY,
    created_at                    timestamptz NOT NULL,
    completed_at                  timestamptz NOT NULL,
    tenant                        text NOT NULL,
    user_id                       text,
    customer_tier                 text NOT NULL,
    prompt                        text NOT NULL,
    prompt_chars                  integer NOT NULL,
    max_tokens                    integer NOT NULL,
    -- The routing decision
    difficulty                    text NOT NULL,          -- predicted label: simple / medium / complex
    confidence                    double precision NOT NULL,
    probabilities                 jsonb NOT NULL,
    decision_reason               text NOT NULL,
    policy                        text NOT NULL,
    classifier                    text NOT NULL,
    routed_model                  text NOT NULL,          -- the model the policy chose
    -- The outcome
    final_model                   text,                   -- the model whose answer was returned
    status                        text NOT NULL CHECK (status IN ('ok', 'failed')),
    attempts                      jsonb NOT NULL,
    attempt_count                 integer NOT NULL,
    escalated                     boolean NOT NULL,
    fell_back                     boolean NOT NULL,
    tokens_in                     integer NOT NULL,
    tokens_out                    integer NOT NULL,
    latency_ms                    double precision NOT NULL,
    cost_micro_usd                bigint NOT NULL,        -- every attempt's cost, summed
    counterfactual_model          text,
    counterfactual_cost_micro_usd bigint,
    response                      text,
    finish_reason                 text,
    error                         text,
    metadata                      jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX requests_created_at_idx ON requests (created_at);
CREATE INDEX requests_final_model_created_idx ON requests (final_model, created_at);
CREATE INDEX requests_difficulty_created_idx ON requests (difficulty, created_at);
CREATE INDEX requests_tenant_created_idx ON requests (tenant, created_at);
CREATE INDEX requests_status_created_idx ON requests (status, created_at);

-- One row per call to a model, for per-model latency, escalation and fallback analytics.
CREATE TABLE request_attempts (
    request_id     text NOT NULL REFERENCES requests (request_id) ON DELETE CASCADE,
    attempt_no     integer NOT NULL,
    model          text NOT NULL,
    tier           text NOT NULL,
    status         text NOT NULL CHECK (status IN ('ok', 'error', 'rejected')),
    started_at     timestamptz NOT NULL,
    latency_ms     double precision NOT NULL,
    tokens_in      integer NOT NULL,
    tokens_out     integer NOT NULL,
    cost_micro_usd bigint NOT NULL,
    finish_reason  text,
    retries        integer NOT NULL DEFAULT 0,
    error          text,
    next_reason    text,
    PRIMARY KEY (request_id, attempt_no)
);

CREATE INDEX request_attempts_model_started_idx ON request_attempts (model, started_at);
CREATE INDEX request_attempts_started_idx ON request_attempts (started_at);

-- Prices, effective-dated: a request is priced at the rate in force when it was created.
CREATE TABLE cost_rates (
    model                   text NOT NULL,
    effective_from          timestamptz NOT NULL,
    input_micro_usd_per_1k  bigint NOT NULL CHECK (input_micro_usd_per_1k >= 0),
    output_micro_usd_per_1k bigint NOT NULL CHECK (output_micro_usd_per_1k >= 0),
    source                  text,
    PRIMARY KEY (model, effective_from)
);

-- Graded outcomes: a replayed answer with recorded correctness, or an offline evaluation.
CREATE TABLE model_eval (
    request_id     text PRIMARY KEY REFERENCES requests (request_id) ON DELETE CASCADE,
    evaluated_at   timestamptz NOT NULL,
    model          text NOT NULL,
    difficulty     text,
    source         text,
    item_id        text,
    correct        boolean NOT NULL,
    cost_micro_usd bigint NOT NULL
);

CREATE INDEX model_eval_evaluated_at_idx ON model_eval (evaluated_at);
CREATE INDEX model_eval_model_evaluated_idx ON model_eval (model, evaluated_at);
