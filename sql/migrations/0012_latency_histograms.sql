-- Latency histograms for the dashboard's Latency view: its percentiles read a few thousand histogram rows per day
-- instead of sorting every call and request in range.
--
-- A latency of x ms goes to bin ceil(ln x / ln 1.02): bin i holds (1.02^(i-1), 1.02^i], and the dashboard reads it
-- back as 2 * 1.02^i / 2.02, within 0.99 % of every latency in the bin (the relative-error bins of DDSketch,
-- Masson et al., VLDB 2019). A percentile read from the bins is within 0.99 % of the exact percentile_cont.
-- Zero (and negative) latencies, which the replay models could record, get a bin of their own, read back as 0.
--
-- One row per UTC day, measure, tenant, difficulty, model and bin:
--   call        answered calls (status ok or rejected) of request_attempts, day of started_at, model called;
--   call_error  failed calls (bin 0: counted, not timed), day of started_at, model called;
--   request     whole requests, latency_ms, day of created_at, answering model (NULL when it failed);
--   ttft        streamed requests, ttft_ms, day of created_at, answering model.
-- Tenant and difficulty are the request's, for calls too. Kept exact in the writer's transaction by statement
-- triggers, as the hourly rollups of 0008 are: writers append signed deltas, readers sum histogram + delta, and
-- dashboard_fold_latency() folds the deltas in.

CREATE FUNCTION dashboard_latency_bin(ms double precision) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN ms > 0 THEN greatest(-100000, least(100000, ceil(ln(ms) / ln(1.02))))::integer
                ELSE -2147483648 END
$$;

CREATE TABLE latency_daily (
    day        date NOT NULL,
    measure    text NOT NULL CHECK (measure IN ('call', 'call_error', 'request', 'ttft')),
    tenant     text NOT NULL,
    difficulty text NOT NULL,
    model      text,
    bin        integer NOT NULL,
    n          integer NOT NULL,  -- integer: sums of it aggregate as bigint, not numeric
    UNIQUE NULLS NOT DISTINCT (day, measure, tenant, difficulty, model, bin)
);

CREATE TABLE latency_daily_delta (LIKE latency_daily);

-- ---------------------------------------------------------------- contributions of request rows

CREATE FUNCTION dashboard_latency_requests() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Requests: only rows whose day, tenant, difficulty, answering model or latencies changed (a grade arriving
    -- changes none of them).
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO latency_daily_delta (day, measure, tenant, difficulty, model, bin, n)
        SELECT c.day, c.measure, c.tenant, c.difficulty, c.model, c.bin, sum(c.n) FROM (
            SELECT (o.created_at AT TIME ZONE 'UTC')::date AS day, m.measure, o.tenant, o.difficulty,
                   o.final_model AS model, dashboard_latency_bin(m.ms) AS bin, -1 AS n
            FROM old_requests o JOIN new_requests nw USING (request_id)
            CROSS JOIN LATERAL (VALUES ('request', o.latency_ms), ('ttft', o.ttft_ms)) AS m (measure, ms)
            WHERE m.ms IS NOT NULL
              AND (o.created_at, o.tenant, o.difficulty, o.final_model, o.latency_ms, o.ttft_ms)
                  IS DISTINCT FROM (nw.created_at, nw.tenant, nw.difficulty, nw.final_model, nw.latency_ms, nw.ttft_ms)
            UNION ALL
            SELECT (nw.created_at AT TIME ZONE 'UTC')::date, m.measure, nw.tenant, nw.difficulty, nw.final_model,
                   dashboard_latency_bin(m.ms), 1
            FROM old_requests o JOIN new_requests nw USING (request_id)
            CROSS JOIN LATERAL (VALUES ('request', nw.latency_ms), ('ttft', nw.ttft_ms)) AS m (measure, ms)
            WHERE m.ms IS NOT NULL
              AND (o.created_at, o.tenant, o.difficulty, o.final_model, o.latency_ms, o.ttft_ms)
                  IS DISTINCT FROM (nw.created_at, nw.tenant, nw.difficulty, nw.final_model, nw.latency_ms, nw.ttft_ms)
        ) AS c GROUP BY 1, 2, 3, 4, 5, 6;
        -- A request whose tenant or difficulty changed takes its calls' contribution along, so that the calls
        -- deleted next (the sink rewrites them) subtract from where they are.
        INSERT INTO latency_daily_delta (day, measure, tenant, difficulty, model, bin, n)
        SELECT (a.started_at AT TIME ZONE 'UTC')::date,
               CASE WHEN a.status = 'error' THEN 'call_error' ELSE 'call' END, moved.tenant, moved.difficulty, a.model,
               CASE WHEN a.status = 'error' THEN 0 ELSE dashboard_latency_bin(a.latency_ms) END, sum(moved.sign)
        FROM (
            SELECT o.request_id, -1 AS sign, o.tenant, o.difficulty
            FROM old_requests o JOIN new_requests nw USING (request_id)
            WHERE (o.tenant, o.difficulty) IS DISTINCT FROM (nw.tenant, nw.difficulty)
            UNION ALL
            SELECT nw.request_id, 1, nw.tenant, nw.difficulty
            FROM old_requests o JOIN new_requests nw USING (request_id)
            WHERE (o.tenant, o.difficulty) IS DISTINCT FROM (nw.tenant, nw.difficulty)
        ) AS moved JOIN request_attempts a USING (request_id)
        GROUP BY 1, 2, 3, 4, 5, 6;
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO latency_daily_delta (day, measure, tenant, difficulty, model, bin, n)
        SELECT (r.created_at AT TIME ZONE 'UTC')::date, m.measure, r.tenant, r.difficulty, r.final_model,
               dashboard_latency_bin(m.ms), -count(*)
        FROM old_requests r CROSS JOIN LATERAL (VALUES ('request', r.latency_ms), ('ttft', r.ttft_ms)) AS m (measure, ms)
        WHERE m.ms IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6;
    ELSE
        INSERT INTO latency_daily_delta (day, measure, tenant, difficulty, model, bin, n)
        SELECT (r.created_at AT TIME ZONE 'UTC')::date, m.measure, r.tenant, r.difficulty, r.final_model,
               dashboard_latency_bin(m.ms), count(*)
        FROM new_requests r CROSS JOIN LATERAL (VALUES ('request', r.latency_ms), ('ttft', r.ttft_ms)) AS m (measure, ms)
        WHERE m.ms IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER latency_requests_insert AFTER INSERT ON requests REFERENCING NEW TABLE AS new_requests
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_latency_requests();
CREATE TRIGGER latency_requests_update AFTER UPDATE ON requests
    REFERENCING OLD TABLE AS old_requests NEW TABLE AS new_requests
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_latency_requests();
CREATE TRIGGER latency_requests_delete AFTER DELETE ON requests REFERENCING OLD TABLE AS old_requests
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_latency_requests();

-- A deleted request's calls go with it (ON DELETE CASCADE), after it is gone: subtract them while it is here.
CREATE FUNCTION dashboard_latency_request_delete_calls() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO latency_daily_delta (day, measure, tenant, difficulty, model, bin, n)
    SELECT (a.started_at AT TIME ZONE 'UTC')::date, CASE WHEN a.status = 'error' THEN 'call_error' ELSE 'call' END,
           OLD.tenant, OLD.difficulty, a.model,
           CASE WHEN a.status = 'error' THEN 0 ELSE dashboard_latency_bin(a.latency_ms) END, -count(*)
    FROM request_attempts a WHERE a.request_id = OLD.request_id
    GROUP BY 1, 2, 3, 4, 5, 6;
    RETURN OLD;
END $$;

CREATE TRIGGER latency_request_delete_calls BEFORE DELETE ON requests
    FOR EACH ROW EXECUTE FUNCTION dashboard_latency_request_delete_calls();

-- ---------------------------------------------------------------- contributions of calls

CREATE FUNCTION dashboard_latency_calls() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Calls whose request is gone (a cascaded delete) were subtracted by the request's own trigger.
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO latency_daily_delta (day, measure, tenant, difficulty, model, bin, n)
        SELECT (a.started_at AT TIME ZONE 'UTC')::date,
               CASE WHEN a.status = 'error' THEN 'call_error' ELSE 'call' END, r.tenant, r.difficulty, a.model,
               CASE WHEN a.status = 'error' THEN 0 ELSE dashboard_latency_bin(a.latency_ms) END, -count(*)
        FROM old_calls a JOIN requests r USING (request_id)
        GROUP BY 1, 2, 3, 4, 5, 6;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO latency_daily_delta (day, measure, tenant, difficulty, model, bin, n)
        SELECT (a.started_at AT TIME ZONE 'UTC')::date,
               CASE WHEN a.status = 'error' THEN 'call_error' ELSE 'call' END, r.tenant, r.difficulty, a.model,
               CASE WHEN a.status = 'error' THEN 0 ELSE dashboard_latency_bin(a.latency_ms) END, count(*)
        FROM new_calls a JOIN requests r USING (request_id)
        GROUP BY 1, 2, 3, 4, 5, 6;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER latency_calls_insert AFTER INSERT ON request_attempts REFERENCING NEW TABLE AS new_calls
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_latency_calls();
CREATE TRIGGER latency_calls_update AFTER UPDATE ON request_attempts
    REFERENCING OLD TABLE AS old_calls NEW TABLE AS new_calls
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_latency_calls();
CREATE TRIGGER latency_calls_delete AFTER DELETE ON request_attempts REFERENCING OLD TABLE AS old_calls
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_latency_calls();

-- TRUNCATE fires no row or delete trigger: it empties the histograms of what it emptied.
CREATE FUNCTION dashboard_latency_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'requests' THEN
        DELETE FROM latency_daily;
        DELETE FROM latency_daily_delta;
    ELSE
        DELETE FROM latency_daily WHERE measure IN ('call', 'call_error');
        DELETE FROM latency_daily_delta WHERE measure IN ('call', 'call_error');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER latency_requests_truncate AFTER TRUNCATE ON requests
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_latency_truncate();
CREATE TRIGGER latency_calls_truncate AFTER TRUNCATE ON request_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_latency_truncate();

-- ---------------------------------------------------------------- folding the deltas in

CREATE FUNCTION dashboard_fold_latency() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('dashboard_fold_latency')) THEN
        RETURN false;
    END IF;
    WITH moved AS (DELETE FROM latency_daily_delta RETURNING *)
    INSERT INTO latency_daily
    SELECT day, measure, tenant, difficulty, model, bin, sum(n) FROM moved GROUP BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (day, measure, tenant, difficulty, model, bin) DO UPDATE SET n = latency_daily.n + EXCLUDED.n;
    DELETE FROM latency_daily WHERE n = 0;
    RETURN true;
END $$;

-- Rows already stored: their contribution, as if each had just been written.
INSERT INTO latency_daily_delta (day, measure, tenant, difficulty, model, bin, n)
SELECT (r.created_at AT TIME ZONE 'UTC')::date, m.measure, r.tenant, r.difficulty, r.final_model,
       dashboard_latency_bin(m.ms), count(*)
FROM requests r CROSS JOIN LATERAL (VALUES ('request', r.latency_ms), ('ttft', r.ttft_ms)) AS m (measure, ms)
WHERE m.ms IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6;

INSERT INTO latency_daily_delta (day, measure, tenant, difficulty, model, bin, n)
SELECT (a.started_at AT TIME ZONE 'UTC')::date, CASE WHEN a.status = 'error' THEN 'call_error' ELSE 'call' END,
       r.tenant, r.difficulty, a.model,
       CASE WHEN a.status = 'error' THEN 0 ELSE dashboard_latency_bin(a.latency_ms) END, count(*)
FROM request_attempts a JOIN requests r USING (request_id)
GROUP BY 1, 2, 3, 4, 5, 6;

SELECT dashboard_fold_latency();
