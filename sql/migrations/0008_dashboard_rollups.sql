-- Hourly rollups for the dashboard: its views sum a few thousand rollup rows instead of scanning millions of
-- requests and attempts. Exact, not sampled: every write to requests and request_attempts adds its signed
-- contribution (+ for new rows, - for old ones) in the same transaction, through statement triggers.
--
-- Writers only ever INSERT into the *_delta tables (no row a concurrent writer also locks, so the sink's batches
-- and the API's single writes never wait on each other or deadlock here). Readers sum rollup + delta;
-- dashboard_fold_rollups() moves the deltas into the rollup (one caller at a time, under an advisory lock).
-- Hours are UTC hours of the request's created_at; attempts are rolled up under their request's hour, tenant,
-- difficulty and answering model, so the dashboard's filters apply to them as they do on the joined rows.

CREATE TABLE requests_hourly (
    hour                 timestamptz NOT NULL,
    tenant               text NOT NULL,
    difficulty           text NOT NULL,
    final_model          text,
    routed_model         text NOT NULL,
    classifier           text NOT NULL,
    router_version       text,
    counterfactual_model text,
    status               text NOT NULL,
    simulated            boolean NOT NULL,
    requests             bigint NOT NULL,
    spend_micro_usd      bigint NOT NULL,
    comparable_requests  bigint NOT NULL,
    comparable_spend_micro_usd bigint NOT NULL,
    baseline_micro_usd   bigint NOT NULL,
    graded               bigint NOT NULL,
    correct              bigint NOT NULL,
    baseline_correct     bigint NOT NULL,
    overhead_micro_usd   bigint NOT NULL,
    escalated            bigint NOT NULL,
    fell_back            bigint NOT NULL,
    unrecorded           bigint NOT NULL,
    tokens_in            bigint NOT NULL,
    tokens_out           bigint NOT NULL,
    -- First and last request of the group (not lowered when a request is deleted: the router deletes none).
    first_created        timestamptz,
    last_created         timestamptz,
    UNIQUE NULLS NOT DISTINCT (hour, tenant, difficulty, final_model, routed_model, classifier, router_version,
                               counterfactual_model, status, simulated)
);

CREATE TABLE requests_hourly_delta (LIKE requests_hourly);

CREATE TABLE attempts_hourly (
    hour             timestamptz NOT NULL,
    tenant           text NOT NULL,
    difficulty       text NOT NULL,
    final_model      text,
    model            text NOT NULL,
    status           text NOT NULL,
    next_model       text,
    next_reason_kind text,
    calls            bigint NOT NULL,
    cost_micro_usd   bigint NOT NULL,
    -- An example of the hop's reason (the smallest text seen), for the escalations table.
    example_reason   text,
    UNIQUE NULLS NOT DISTINCT (hour, tenant, difficulty, final_model, model, status, next_model, next_reason_kind)
);

CREATE TABLE attempts_hourly_delta (LIKE attempts_hourly);

-- Graded answers per UTC hour of evaluated_at, graded model and difficulty (the quality view's filters).
CREATE TABLE evals_hourly (
    hour           timestamptz NOT NULL,
    model          text NOT NULL,
    difficulty     text,
    graded         bigint NOT NULL,
    correct        bigint NOT NULL,
    cost_micro_usd bigint NOT NULL,
    UNIQUE NULLS NOT DISTINCT (hour, model, difficulty)
);

CREATE TABLE evals_hourly_delta (LIKE evals_hourly);

-- ---------------------------------------------------------------- contributions of request rows

CREATE FUNCTION dashboard_requests_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO requests_hourly_delta (hour, tenant, difficulty, final_model, routed_model, classifier,
            router_version, counterfactual_model, status, simulated, requests, spend_micro_usd, comparable_requests,
            comparable_spend_micro_usd, baseline_micro_usd, graded, correct, baseline_correct, overhead_micro_usd,
            escalated, fell_back, unrecorded, tokens_in, tokens_out)
        SELECT date_trunc('hour', r.created_at, 'UTC'), r.tenant, r.difficulty, r.final_model, r.routed_model,
               r.classifier, r.router_version, r.counterfactual_model, r.status, r.metadata ? 'simulated_time',
               -count(*), -coalesce(sum(r.cost_micro_usd), 0), -count(r.counterfactual_cost_micro_usd),
               -coalesce(sum(r.cost_micro_usd) FILTER (WHERE r.counterfactual_cost_micro_usd IS NOT NULL), 0),
               -coalesce(sum(r.counterfactual_cost_micro_usd), 0),
               -count(*) FILTER (WHERE r.correct IS NOT NULL AND r.counterfactual_correct IS NOT NULL),
               -count(*) FILTER (WHERE r.correct AND r.counterfactual_correct IS NOT NULL),
               -count(*) FILTER (WHERE r.counterfactual_correct AND r.correct IS NOT NULL),
               -coalesce(sum(r.overhead_micro_usd), 0), -count(*) FILTER (WHERE r.escalated),
               -count(*) FILTER (WHERE r.fell_back), -count(*) FILTER (WHERE r.recorded IS FALSE),
               -coalesce(sum(r.tokens_in), 0), -coalesce(sum(r.tokens_out), 0)
        FROM old_requests r GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO requests_hourly_delta (hour, tenant, difficulty, final_model, routed_model, classifier,
            router_version, counterfactual_model, status, simulated, requests, spend_micro_usd, comparable_requests,
            comparable_spend_micro_usd, baseline_micro_usd, graded, correct, baseline_correct, overhead_micro_usd,
            escalated, fell_back, unrecorded, tokens_in, tokens_out, first_created, last_created)
        SELECT date_trunc('hour', r.created_at, 'UTC'), r.tenant, r.difficulty, r.final_model, r.routed_model,
               r.classifier, r.router_version, r.counterfactual_model, r.status, r.metadata ? 'simulated_time',
               count(*), coalesce(sum(r.cost_micro_usd), 0), count(r.counterfactual_cost_micro_usd),
               coalesce(sum(r.cost_micro_usd) FILTER (WHERE r.counterfactual_cost_micro_usd IS NOT NULL), 0),
               coalesce(sum(r.counterfactual_cost_micro_usd), 0),
               count(*) FILTER (WHERE r.correct IS NOT NULL AND r.counterfactual_correct IS NOT NULL),
               count(*) FILTER (WHERE r.correct AND r.counterfactual_correct IS NOT NULL),
               count(*) FILTER (WHERE r.counterfactual_correct AND r.correct IS NOT NULL),
               coalesce(sum(r.overhead_micro_usd), 0), count(*) FILTER (WHERE r.escalated),
               count(*) FILTER (WHERE r.fell_back), count(*) FILTER (WHERE r.recorded IS FALSE),
               coalesce(sum(r.tokens_in), 0), coalesce(sum(r.tokens_out), 0), min(r.created_at), max(r.created_at)
        FROM new_requests r GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        -- A request whose hour, tenant, difficulty or answering model changed takes its attempts' contribution
        -- along, so that the attempts deleted next (the sink rewrites them) subtract from where they are.
        INSERT INTO attempts_hourly_delta (hour, tenant, difficulty, final_model, model, status, next_model,
                                           next_reason_kind, calls, cost_micro_usd, example_reason)
        SELECT moved.hour, moved.tenant, moved.difficulty, moved.final_model, a.model, a.status, a.next_model,
               a.next_reason_kind, sum(moved.sign), sum(moved.sign * a.cost_micro_usd),
               min(left(a.next_reason, 120)) FILTER (WHERE moved.sign > 0)
        FROM (
            SELECT o.request_id, -1 AS sign, date_trunc('hour', o.created_at, 'UTC') AS hour, o.tenant, o.difficulty,
                   o.final_model
            FROM old_requests o JOIN new_requests n USING (request_id)
            WHERE (o.created_at, o.tenant, o.difficulty, o.final_model)
                  IS DISTINCT FROM (n.created_at, n.tenant, n.difficulty, n.final_model)
            UNION ALL
            SELECT n.request_id, 1, date_trunc('hour', n.created_at, 'UTC'), n.tenant, n.difficulty, n.final_model
            FROM old_requests o JOIN new_requests n USING (request_id)
            WHERE (o.created_at, o.tenant, o.difficulty, o.final_model)
                  IS DISTINCT FROM (n.created_at, n.tenant, n.difficulty, n.final_model)
        ) AS moved JOIN request_attempts a USING (request_id)
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER requests_rollup_insert AFTER INSERT ON requests REFERENCING NEW TABLE AS new_requests
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_requests_rollup();
CREATE TRIGGER requests_rollup_update AFTER UPDATE ON requests
    REFERENCING OLD TABLE AS old_requests NEW TABLE AS new_requests
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_requests_rollup();
CREATE TRIGGER requests_rollup_delete AFTER DELETE ON requests REFERENCING OLD TABLE AS old_requests
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_requests_rollup();

-- A deleted request's attempts go with it (ON DELETE CASCADE), after it is gone: subtract them while it is here.
CREATE FUNCTION dashboard_request_delete_attempts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO attempts_hourly_delta (hour, tenant, difficulty, final_model, model, status, next_model,
                                       next_reason_kind, calls, cost_micro_usd)
    SELECT date_trunc('hour', OLD.created_at, 'UTC'), OLD.tenant, OLD.difficulty, OLD.final_model, a.model,
           a.status, a.next_model, a.next_reason_kind, -count(*), -coalesce(sum(a.cost_micro_usd), 0)
    FROM request_attempts a WHERE a.request_id = OLD.request_id
    GROUP BY a.model, a.status, a.next_model, a.next_reason_kind;
    RETURN OLD;
END $$;

CREATE TRIGGER requests_rollup_delete_attempts BEFORE DELETE ON requests
    FOR EACH ROW EXECUTE FUNCTION dashboard_request_delete_attempts();

-- ---------------------------------------------------------------- contributions of attempt rows

CREATE FUNCTION dashboard_attempts_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Attempts whose request is gone (a cascaded delete) were subtracted by the request's own trigger.
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO attempts_hourly_delta (hour, tenant, difficulty, final_model, model, status, next_model,
                                           next_reason_kind, calls, cost_micro_usd)
        SELECT date_trunc('hour', r.created_at, 'UTC'), r.tenant, r.difficulty, r.final_model, a.model, a.status,
               a.next_model, a.next_reason_kind, -count(*), -coalesce(sum(a.cost_micro_usd), 0)
        FROM old_attempts a JOIN requests r USING (request_id)
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO attempts_hourly_delta (hour, tenant, difficulty, final_model, model, status, next_model,
                                           next_reason_kind, calls, cost_micro_usd, example_reason)
        SELECT date_trunc('hour', r.created_at, 'UTC'), r.tenant, r.difficulty, r.final_model, a.model, a.status,
               a.next_model, a.next_reason_kind, count(*), coalesce(sum(a.cost_micro_usd), 0),
               min(left(a.next_reason, 120))
        FROM new_attempts a JOIN requests r USING (request_id)
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER attempts_rollup_insert AFTER INSERT ON request_attempts REFERENCING NEW TABLE AS new_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_attempts_rollup();
CREATE TRIGGER attempts_rollup_update AFTER UPDATE ON request_attempts
    REFERENCING OLD TABLE AS old_attempts NEW TABLE AS new_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_attempts_rollup();
CREATE TRIGGER attempts_rollup_delete AFTER DELETE ON request_attempts REFERENCING OLD TABLE AS old_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_attempts_rollup();

-- ---------------------------------------------------------------- contributions of graded answers

CREATE FUNCTION dashboard_evals_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO evals_hourly_delta
        SELECT date_trunc('hour', e.evaluated_at, 'UTC'), e.model, e.difficulty, -count(*),
               -count(*) FILTER (WHERE e.correct), -coalesce(sum(e.cost_micro_usd), 0)
        FROM old_evals e GROUP BY 1, 2, 3;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO evals_hourly_delta
        SELECT date_trunc('hour', e.evaluated_at, 'UTC'), e.model, e.difficulty, count(*),
               count(*) FILTER (WHERE e.correct), coalesce(sum(e.cost_micro_usd), 0)
        FROM new_evals e GROUP BY 1, 2, 3;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER evals_rollup_insert AFTER INSERT ON model_eval REFERENCING NEW TABLE AS new_evals
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_evals_rollup();
CREATE TRIGGER evals_rollup_update AFTER UPDATE ON model_eval
    REFERENCING OLD TABLE AS old_evals NEW TABLE AS new_evals
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_evals_rollup();
CREATE TRIGGER evals_rollup_delete AFTER DELETE ON model_eval REFERENCING OLD TABLE AS old_evals
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_evals_rollup();

-- TRUNCATE fires no row or delete trigger: it empties the rollups of what it emptied.
CREATE FUNCTION dashboard_truncate_rollups() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'model_eval' THEN
        DELETE FROM evals_hourly;
        DELETE FROM evals_hourly_delta;
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'requests' THEN
        DELETE FROM requests_hourly;
        DELETE FROM requests_hourly_delta;
    END IF;
    DELETE FROM attempts_hourly;
    DELETE FROM attempts_hourly_delta;
    RETURN NULL;
END $$;

CREATE TRIGGER requests_rollup_truncate AFTER TRUNCATE ON requests
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_truncate_rollups();
CREATE TRIGGER attempts_rollup_truncate AFTER TRUNCATE ON request_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_truncate_rollups();
CREATE TRIGGER evals_rollup_truncate AFTER TRUNCATE ON model_eval
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_truncate_rollups();

-- ---------------------------------------------------------------- folding the deltas in

CREATE FUNCTION dashboard_fold_rollups() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    -- One folder at a time; a dashboard that finds another folding reads rollup + delta as they are.
    IF NOT pg_try_advisory_xact_lock(hashtext('dashboard_fold_rollups')) THEN
        RETURN false;
    END IF;
    WITH moved AS (DELETE FROM requests_hourly_delta RETURNING *)
    INSERT INTO requests_hourly
    SELECT hour, tenant, difficulty, final_model, routed_model, classifier, router_version, counterfactual_model,
           status, simulated, sum(requests), sum(spend_micro_usd), sum(comparable_requests),
           sum(comparable_spend_micro_usd), sum(baseline_micro_usd), sum(graded), sum(correct),
           sum(baseline_correct), sum(overhead_micro_usd), sum(escalated), sum(fell_back), sum(unrecorded),
           sum(tokens_in), sum(tokens_out), min(first_created), max(last_created)
    FROM moved GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
    ON CONFLICT (hour, tenant, difficulty, final_model, routed_model, classifier, router_version,
                 counterfactual_model, status, simulated) DO UPDATE SET
        requests = requests_hourly.requests + EXCLUDED.requests,
        spend_micro_usd = requests_hourly.spend_micro_usd + EXCLUDED.spend_micro_usd,
        comparable_requests = requests_hourly.comparable_requests + EXCLUDED.comparable_requests,
        comparable_spend_micro_usd = requests_hourly.comparable_spend_micro_usd + EXCLUDED.comparable_spend_micro_usd,
        baseline_micro_usd = requests_hourly.baseline_micro_usd + EXCLUDED.baseline_micro_usd,
        graded = requests_hourly.graded + EXCLUDED.graded,
        correct = requests_hourly.correct + EXCLUDED.correct,
        baseline_correct = requests_hourly.baseline_correct + EXCLUDED.baseline_correct,
        overhead_micro_usd = requests_hourly.overhead_micro_usd + EXCLUDED.overhead_micro_usd,
        escalated = requests_hourly.escalated + EXCLUDED.escalated,
        fell_back = requests_hourly.fell_back + EXCLUDED.fell_back,
        unrecorded = requests_hourly.unrecorded + EXCLUDED.unrecorded,
        tokens_in = requests_hourly.tokens_in + EXCLUDED.tokens_in,
        tokens_out = requests_hourly.tokens_out + EXCLUDED.tokens_out,
        first_created = least(requests_hourly.first_created, EXCLUDED.first_created),
        last_created = greatest(requests_hourly.last_created, EXCLUDED.last_created);
    DELETE FROM requests_hourly WHERE requests = 0;

    WITH moved AS (DELETE FROM attempts_hourly_delta RETURNING *)
    INSERT INTO attempts_hourly
    SELECT hour, tenant, difficulty, final_model, model, status, next_model, next_reason_kind, sum(calls),
           sum(cost_micro_usd), min(example_reason)
    FROM moved GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT (hour, tenant, difficulty, final_model, model, status, next_model, next_reason_kind) DO UPDATE SET
        calls = attempts_hourly.calls + EXCLUDED.calls,
        cost_micro_usd = attempts_hourly.cost_micro_usd + EXCLUDED.cost_micro_usd,
        example_reason = least(attempts_hourly.example_reason, EXCLUDED.example_reason);
    DELETE FROM attempts_hourly WHERE calls = 0;

    WITH moved AS (DELETE FROM evals_hourly_delta RETURNING *)
    INSERT INTO evals_hourly
    SELECT hour, model, difficulty, sum(graded), sum(correct), sum(cost_micro_usd)
    FROM moved GROUP BY 1, 2, 3
    ON CONFLICT (hour, model, difficulty) DO UPDATE SET
        graded = evals_hourly.graded + EXCLUDED.graded,
        correct = evals_hourly.correct + EXCLUDED.correct,
        cost_micro_usd = evals_hourly.cost_micro_usd + EXCLUDED.cost_micro_usd;
    DELETE FROM evals_hourly WHERE graded = 0;
    RETURN true;
END $$;

-- Rows already stored: their contribution, as if each had just been written.
INSERT INTO requests_hourly_delta (hour, tenant, difficulty, final_model, routed_model, classifier, router_version,
    counterfactual_model, status, simulated, requests, spend_micro_usd, comparable_requests,
    comparable_spend_micro_usd, baseline_micro_usd, graded, correct, baseline_correct, overhead_micro_usd, escalated,
    fell_back, unrecorded, tokens_in, tokens_out, first_created, last_created)
SELECT date_trunc('hour', r.created_at, 'UTC'), r.tenant, r.difficulty, r.final_model, r.routed_model, r.classifier,
       r.router_version, r.counterfactual_model, r.status, r.metadata ? 'simulated_time',
       count(*), coalesce(sum(r.cost_micro_usd), 0), count(r.counterfactual_cost_micro_usd),
       coalesce(sum(r.cost_micro_usd) FILTER (WHERE r.counterfactual_cost_micro_usd IS NOT NULL), 0),
       coalesce(sum(r.counterfactual_cost_micro_usd), 0),
       count(*) FILTER (WHERE r.correct IS NOT NULL AND r.counterfactual_correct IS NOT NULL),
       count(*) FILTER (WHERE r.correct AND r.counterfactual_correct IS NOT NULL),
       count(*) FILTER (WHERE r.counterfactual_correct AND r.correct IS NOT NULL),
       coalesce(sum(r.overhead_micro_usd), 0), count(*) FILTER (WHERE r.escalated),
       count(*) FILTER (WHERE r.fell_back), count(*) FILTER (WHERE r.recorded IS FALSE),
       coalesce(sum(r.tokens_in), 0), coalesce(sum(r.tokens_out), 0), min(r.created_at), max(r.created_at)
FROM requests r GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10;

INSERT INTO attempts_hourly_delta (hour, tenant, difficulty, final_model, model, status, next_model, next_reason_kind,
                                   calls, cost_micro_usd, example_reason)
SELECT date_trunc('hour', r.created_at, 'UTC'), r.tenant, r.difficulty, r.final_model, a.model, a.status,
       a.next_model, a.next_reason_kind, count(*), coalesce(sum(a.cost_micro_usd), 0), min(left(a.next_reason, 120))
FROM request_attempts a JOIN requests r USING (request_id)
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;

INSERT INTO evals_hourly_delta
SELECT date_trunc('hour', e.evaluated_at, 'UTC'), e.model, e.difficulty, count(*), count(*) FILTER (WHERE e.correct),
       coalesce(sum(e.cost_micro_usd), 0)
FROM model_eval e GROUP BY 1, 2, 3;

SELECT dashboard_fold_rollups();

-- The latency view's percentiles read every call (request) in range; these let them read the index alone
-- instead of fetching each row from the table (the per-model one also hands the calls over in model order).
CREATE INDEX request_attempts_model_started_latency_idx ON request_attempts (model, started_at)
    INCLUDE (status, latency_ms);
CREATE INDEX requests_created_latency_idx ON requests (created_at)
    INCLUDE (latency_ms, ttft_ms, final_model, difficulty, tenant);

-- The request explorer's prompt search (ILIKE '%text%') through a trigram index instead of a scan of every prompt.
-- pg_trgm ships with Postgres (contrib) and is a trusted extension; where it is missing or may not be created,
-- the search still works, as a scan.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        CREATE INDEX requests_prompt_trgm_idx ON requests USING gin (prompt gin_trgm_ops);
    ELSE
        RAISE NOTICE 'pg_trgm is not available: the dashboard''s prompt search scans the requests';
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pg_trgm may not be created here: the dashboard''s prompt search scans the requests';
END $$;
