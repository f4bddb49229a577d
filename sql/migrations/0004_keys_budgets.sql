-- Who may spend: tenants and their guardrails, API keys (stored hashed), spend counters with holds for
-- requests in flight, the ledger of accepted request ids, and per-minute rate-limit windows.

CREATE TABLE tenants (
    tenant                text PRIMARY KEY,
    created_at            timestamptz NOT NULL DEFAULT now(),
    budget_period         text NOT NULL DEFAULT 'month' CHECK (budget_period IN ('day', 'month')),
    budget_soft_micro_usd bigint CHECK (budget_soft_micro_usd >= 0),
    budget_hard_micro_usd bigint CHECK (budget_hard_micro_usd >= 0),
    pii_mode              text NOT NULL DEFAULT 'off' CHECK (pii_mode IN ('off', 'redact-stored', 'redact', 'refuse')),
    store_prompts         boolean NOT NULL DEFAULT true,
    deny_list             text[] NOT NULL DEFAULT '{}',
    max_prompt_chars      integer CHECK (max_prompt_chars > 0)
);

CREATE TABLE api_keys (
    key_id                text PRIMARY KEY,               -- the public part of the key, shown in listings
    key_hash              bytea NOT NULL,                 -- HMAC-SHA256 of the whole key; the key is never stored
    tenant                text NOT NULL REFERENCES tenants (tenant),
    name                  text,
    role                  text NOT NULL DEFAULT 'tenant' CHECK (role IN ('tenant', 'admin')),
    created_at            timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz,
    revoked_at            timestamptz,
    allowed_models        text[],                         -- NULL: every model
    requests_per_min      integer CHECK (requests_per_min > 0),
    tokens_per_min        integer CHECK (tokens_per_min > 0),
    budget_period         text NOT NULL DEFAULT 'month' CHECK (budget_period IN ('day', 'month')),
    budget_soft_micro_usd bigint CHECK (budget_soft_micro_usd >= 0),
    budget_hard_micro_usd bigint CHECK (budget_hard_micro_usd >= 0),
    replaced_by           text
);

CREATE INDEX api_keys_tenant_idx ON api_keys (tenant);

-- Spend per key and per tenant and UTC period: settled spend plus the holds of requests in flight.
CREATE TABLE budget_usage (
    scope              text NOT NULL CHECK (scope IN ('key', 'tenant')),
    scope_id           text NOT NULL,
    period             text NOT NULL CHECK (period IN ('day', 'month')),
    period_start       date NOT NULL,
    reserved_micro_usd bigint NOT NULL DEFAULT 0,
    spent_micro_usd    bigint NOT NULL DEFAULT 0,
    requests           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, scope_id, period, period_start)
);

-- One row per accepted request id: the tenant that owns it (an id is never shared between tenants) and the
-- hold its worst-case cost put on the counters until the completion settles it.
CREATE TABLE request_ledger (
    request_id          text PRIMARY KEY,
    tenant              text NOT NULL,
    key_id              text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    key_period          text,
    key_period_start    date,
    tenant_period       text NOT NULL,
    tenant_period_start date NOT NULL,
    reserved_micro_usd  bigint NOT NULL DEFAULT 0,
    actual_micro_usd    bigint,
    settled_at          timestamptz
);

CREATE INDEX request_ledger_unsettled_idx ON request_ledger (created_at) WHERE settled_at IS NULL;

-- Fixed one-minute windows per key, shared by every API process.
CREATE TABLE rate_windows (
    key_id       text NOT NULL,
    window_start timestamptz NOT NULL,
    requests     integer NOT NULL DEFAULT 0,
    tokens       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, window_start)
);

-- Which key sent each recorded request (NULL: produced straight to the broker).
ALTER TABLE requests ADD COLUMN key_id text;
