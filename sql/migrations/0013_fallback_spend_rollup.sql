-- Fallback spend, kept apart for the dashboard (docs/dashboard.md#fallback-spend).
--
-- A fallback call is an attempt that the attempt before it (same request, next lower attempt_no) named as its
-- next model after a failure: next_reason_kind 'error' or 'timeout' (the call failed) or 'circuit_open' (the
-- model's circuit breaker was open, so it was skipped without a call: the skipped model's row has status 'error',
-- cost 0 and that kind). Fallback spend is what those calls billed. Escalations (a rejected answer) are not
-- fallbacks; a call after a 'cost_cap' refusal (no next model: the request was parked) or on a parked request's
-- next try is not one either.
--
-- Whether an attempt is a fallback call depends on the row before it, so a write to one attempt can change
-- another's contribution. The triggers below therefore recompute the whole chain of every request a statement
-- touched, as it was before the statement and as it is after it, and add the difference: exact whatever the
-- write (the sink's delete and rewrite, one row at a time, COPY, an update of a single hop, a delete of one
-- attempt). As in 0008 (whose tables and functions this leaves alone), writers only INSERT signed deltas and
-- dashboard_fold_fallback_rollup() folds them in; a read sums rollup + delta.

CREATE TABLE fallback_hourly (
    hour           timestamptz NOT NULL,   -- UTC hour of the request's created_at
    tenant         text NOT NULL,
    difficulty     text NOT NULL,
    final_model    text,                   -- the request's answering model (the dashboard's model filter)
    from_model     text NOT NULL,          -- the model that failed or was skipped
    model          text NOT NULL,          -- the model called instead
    reason_kind    text NOT NULL,          -- error, timeout or circuit_open
    attempts       bigint NOT NULL,        -- attempt rows reached by the hop (a skipped model's row included)
    calls          bigint NOT NULL,        -- of which real calls (a circuit-open skip is no call)
    cost_micro_usd bigint NOT NULL,
    UNIQUE NULLS NOT DISTINCT (hour, tenant, difficulty, final_model, from_model, model, reason_kind)
);

CREATE TABLE fallback_hourly_delta (LIKE fallback_hourly);

-- The statement that adds the fallback calls of the chains in ``chains`` (a query of rows: sign, request_id,
-- attempt_no, model, status, cost_micro_usd, next_model, next_reason_kind) as signed delta rows under their
-- request's current attributes. The caller EXECUTEs it: a trigger's transition tables are visible only to the
-- trigger function's own statements.
CREATE FUNCTION dashboard_fallback_chain_delta(chains text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT format($q$
        INSERT INTO fallback_hourly_delta (hour, tenant, difficulty, final_model, from_model, model, reason_kind,
                                           attempts, calls, cost_micro_usd)
        SELECT date_trunc('hour', r.created_at, 'UTC'), r.tenant, r.difficulty, r.final_model, c.from_model,
               c.model, c.reason_kind, sum(c.sign), coalesce(sum(c.sign) FILTER (WHERE c.is_call), 0),
               sum(c.sign * c.cost_micro_usd)
        FROM (
            SELECT s.sign, s.request_id, s.model, s.cost_micro_usd,
                   NOT (s.status = 'error' AND s.next_reason_kind IS NOT DISTINCT FROM 'circuit_open') AS is_call,
                   lag(s.model) OVER w AS from_model, lag(s.next_model) OVER w AS named,
                   lag(s.next_reason_kind) OVER w AS reason_kind
            FROM (%s) AS s
            WINDOW w AS (PARTITION BY s.sign, s.request_id ORDER BY s.attempt_no)
        ) AS c JOIN requests r USING (request_id)
        WHERE c.reason_kind IN ('error', 'timeout', 'circuit_open') AND c.named = c.model
        GROUP BY 1, 2, 3, 4, 5, 6, 7
        HAVING sum(c.sign) <> 0 OR coalesce(sum(c.sign) FILTER (WHERE c.is_call), 0) <> 0
            OR sum(c.sign * c.cost_micro_usd) <> 0
    $q$, chains)
$$;

CREATE FUNCTION dashboard_fallback_attempts_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    cols constant text := 'a.request_id, a.attempt_no, a.model, a.status, a.cost_micro_usd, a.next_model, '
                          'a.next_reason_kind';
    touched text;
    chains text;
BEGIN
    -- Most chains hold no fallback hop before or after the write, and then contribute nothing either way: a
    -- cheap check first (static statements, planned once), the chains' recomputation only where one is.
    IF TG_OP = 'INSERT' THEN
        IF NOT EXISTS (SELECT 1 FROM request_attempts a
                       WHERE a.request_id IN (SELECT request_id FROM new_attempts)
                         AND a.next_reason_kind IN ('error', 'timeout', 'circuit_open')) THEN
            RETURN NULL;
        END IF;
        -- The sink's own write (one attempt per statement): the same as below, written out so that its plan
        -- is kept. Before: the chains' rows this statement did not write.
        INSERT INTO fallback_hourly_delta (hour, tenant, difficulty, final_model, from_model, model, reason_kind,
                                           attempts, calls, cost_micro_usd)
        SELECT date_trunc('hour', r.created_at, 'UTC'), r.tenant, r.difficulty, r.final_model, c.from_model,
               c.model, c.reason_kind, sum(c.sign), coalesce(sum(c.sign) FILTER (WHERE c.is_call), 0),
               sum(c.sign * c.cost_micro_usd)
        FROM (
            SELECT s.sign, s.request_id, s.model, s.cost_micro_usd,
                   NOT (s.status = 'error' AND s.next_reason_kind IS NOT DISTINCT FROM 'circuit_open') AS is_call,
                   lag(s.model) OVER w AS from_model, lag(s.next_model) OVER w AS named,
                   lag(s.next_reason_kind) OVER w AS reason_kind
            FROM (
                SELECT 1 AS sign, a.request_id, a.attempt_no, a.model, a.status, a.cost_micro_usd, a.next_model,
                       a.next_reason_kind
                FROM request_attempts a WHERE a.request_id IN (SELECT request_id FROM new_attempts)
                UNION ALL
                SELECT -1, a.request_id, a.attempt_no, a.model, a.status, a.cost_micro_usd, a.next_model,
                       a.next_reason_kind
                FROM request_attempts a WHERE a.request_id IN (SELECT request_id FROM new_attempts)
                  AND NOT EXISTS (SELECT 1 FROM new_attempts n
                                  WHERE n.request_id = a.request_id AND n.attempt_no = a.attempt_no)
            ) AS s
            WINDOW w AS (PARTITION BY s.sign, s.request_id ORDER BY s.attempt_no)
        ) AS c JOIN requests r USING (request_id)
        WHERE c.reason_kind IN ('error', 'timeout', 'circuit_open') AND c.named = c.model
        GROUP BY 1, 2, 3, 4, 5, 6, 7
        HAVING sum(c.sign) <> 0 OR coalesce(sum(c.sign) FILTER (WHERE c.is_call), 0) <> 0
            OR sum(c.sign * c.cost_micro_usd) <> 0;
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        IF NOT EXISTS (SELECT 1 FROM old_attempts a WHERE a.next_reason_kind IN ('error', 'timeout', 'circuit_open'))
           AND NOT EXISTS (SELECT 1 FROM request_attempts a
                           WHERE a.request_id IN (SELECT request_id FROM old_attempts)
                             AND a.next_reason_kind IN ('error', 'timeout', 'circuit_open')) THEN
            RETURN NULL;
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM old_attempts a WHERE a.next_reason_kind IN ('error', 'timeout', 'circuit_open'))
          AND NOT EXISTS (SELECT 1 FROM request_attempts a
                          WHERE a.request_id IN (SELECT request_id FROM new_attempts
                                                 UNION SELECT request_id FROM old_attempts)
                            AND a.next_reason_kind IN ('error', 'timeout', 'circuit_open')) THEN
        RETURN NULL;
    END IF;
    -- The requests this statement touched; attempts whose request is gone (a cascaded delete) were subtracted
    -- by the request's own trigger and drop out of the join to requests.
    touched := CASE TG_OP
        WHEN 'INSERT' THEN 'SELECT request_id FROM new_attempts'
        WHEN 'DELETE' THEN 'SELECT request_id FROM old_attempts'
        ELSE 'SELECT request_id FROM new_attempts UNION SELECT request_id FROM old_attempts' END;
    -- After: their chains as they are now (+). Before (−): the rows now there that this statement did not write,
    -- and the rows it deleted or changed as they were.
    chains := format('SELECT 1 AS sign, %s FROM request_attempts a WHERE a.request_id IN (%s)', cols, touched)
        || format(' UNION ALL SELECT -1, %s FROM request_attempts a WHERE a.request_id IN (%s)', cols, touched)
        || CASE WHEN TG_OP = 'DELETE' THEN '' ELSE
               ' AND NOT EXISTS (SELECT 1 FROM new_attempts n'
               ' WHERE n.request_id = a.request_id AND n.attempt_no = a.attempt_no)' END
        || CASE WHEN TG_OP = 'INSERT' THEN '' ELSE format(' UNION ALL SELECT -1, %s FROM old_attempts a', cols) END;
    EXECUTE dashboard_fallback_chain_delta(chains);
    RETURN NULL;
END $$;

CREATE TRIGGER fallback_rollup_attempts_insert AFTER INSERT ON request_attempts
    REFERENCING NEW TABLE AS new_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_fallback_attempts_rollup();
CREATE TRIGGER fallback_rollup_attempts_update AFTER UPDATE ON request_attempts
    REFERENCING OLD TABLE AS old_attempts NEW TABLE AS new_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_fallback_attempts_rollup();
CREATE TRIGGER fallback_rollup_attempts_delete AFTER DELETE ON request_attempts
    REFERENCING OLD TABLE AS old_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_fallback_attempts_rollup();

-- A request whose hour, tenant, difficulty or answering model changed takes its fallback calls along (its
-- attempts are not changed by this statement: the chains are the table's).
CREATE FUNCTION dashboard_fallback_requests_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The sink's upsert fires this on every write, mostly with nothing moved (or nothing updated at all).
    IF NOT EXISTS (SELECT 1 FROM old_requests o JOIN new_requests n USING (request_id)
                   WHERE (date_trunc('hour', o.created_at, 'UTC'), o.tenant, o.difficulty, o.final_model)
                         IS DISTINCT FROM (date_trunc('hour', n.created_at, 'UTC'), n.tenant, n.difficulty,
                                           n.final_model)) THEN
        RETURN NULL;
    END IF;
    INSERT INTO fallback_hourly_delta (hour, tenant, difficulty, final_model, from_model, model, reason_kind,
                                       attempts, calls, cost_micro_usd)
    SELECT m.hour, m.tenant, m.difficulty, m.final_model, c.from_model, c.model, c.reason_kind, sum(m.sign),
           coalesce(sum(m.sign) FILTER (WHERE c.is_call), 0), sum(m.sign * c.cost_micro_usd)
    FROM (
        SELECT o.request_id, -1 AS sign, date_trunc('hour', o.created_at, 'UTC') AS hour, o.tenant, o.difficulty,
               o.final_model
        FROM old_requests o JOIN new_requests n USING (request_id)
        WHERE (date_trunc('hour', o.created_at, 'UTC'), o.tenant, o.difficulty, o.final_model)
              IS DISTINCT FROM (date_trunc('hour', n.created_at, 'UTC'), n.tenant, n.difficulty, n.final_model)
        UNION ALL
        SELECT n.request_id, 1, date_trunc('hour', n.created_at, 'UTC'), n.tenant, n.difficulty, n.final_model
        FROM old_requests o JOIN new_requests n USING (request_id)
        WHERE (date_trunc('hour', o.created_at, 'UTC'), o.tenant, o.difficulty, o.final_model)
              IS DISTINCT FROM (date_trunc('hour', n.created_at, 'UTC'), n.tenant, n.difficulty, n.final_model)
    ) AS m JOIN (
        SELECT a.request_id, a.model, a.cost_micro_usd,
               NOT (a.status = 'error' AND a.next_reason_kind IS NOT DISTINCT FROM 'circuit_open') AS is_call,
               lag(a.model) OVER w AS from_model, lag(a.next_model) OVER w AS named,
               lag(a.next_reason_kind) OVER w AS reason_kind
        FROM request_attempts a WHERE a.request_id IN (SELECT request_id FROM new_requests)
        WINDOW w AS (PARTITION BY a.request_id ORDER BY a.attempt_no)
    ) AS c USING (request_id)
    WHERE c.reason_kind IN ('error', 'timeout', 'circuit_open') AND c.named = c.model
    GROUP BY 1, 2, 3, 4, 5, 6, 7
    HAVING sum(m.sign) <> 0 OR coalesce(sum(m.sign) FILTER (WHERE c.is_call), 0) <> 0
        OR sum(m.sign * c.cost_micro_usd) <> 0;
    RETURN NULL;
END $$;

CREATE TRIGGER fallback_rollup_requests_update AFTER UPDATE ON requests
    REFERENCING OLD TABLE AS old_requests NEW TABLE AS new_requests
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_fallback_requests_moved();

-- A deleted request's attempts go with it (ON DELETE CASCADE), after it is gone: subtract them while it is here.
CREATE FUNCTION dashboard_fallback_request_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE dashboard_fallback_chain_delta(format(
        'SELECT -1 AS sign, a.request_id, a.attempt_no, a.model, a.status, a.cost_micro_usd, a.next_model,'
        ' a.next_reason_kind FROM request_attempts a WHERE a.request_id = %L', OLD.request_id));
    RETURN OLD;
END $$;

CREATE TRIGGER fallback_rollup_request_delete BEFORE DELETE ON requests
    FOR EACH ROW EXECUTE FUNCTION dashboard_fallback_request_delete();

-- TRUNCATE fires no row or delete trigger.
CREATE FUNCTION dashboard_fallback_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM fallback_hourly;
    DELETE FROM fallback_hourly_delta;
    RETURN NULL;
END $$;

CREATE TRIGGER fallback_rollup_requests_truncate AFTER TRUNCATE ON requests
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_fallback_truncate();
CREATE TRIGGER fallback_rollup_attempts_truncate AFTER TRUNCATE ON request_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION dashboard_fallback_truncate();

CREATE FUNCTION dashboard_fold_fallback_rollup() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    -- One folder at a time; a dashboard that finds another folding reads rollup + delta as they are.
    IF NOT pg_try_advisory_xact_lock(hashtext('dashboard_fold_fallback_rollup')) THEN
        RETURN false;
    END IF;
    WITH moved AS (DELETE FROM fallback_hourly_delta RETURNING *)
    INSERT INTO fallback_hourly
    SELECT hour, tenant, difficulty, final_model, from_model, model, reason_kind, sum(attempts), sum(calls),
           sum(cost_micro_usd)
    FROM moved GROUP BY 1, 2, 3, 4, 5, 6, 7
    ON CONFLICT (hour, tenant, difficulty, final_model, from_model, model, reason_kind) DO UPDATE SET
        attempts = fallback_hourly.attempts + EXCLUDED.attempts,
        calls = fallback_hourly.calls + EXCLUDED.calls,
        cost_micro_usd = fallback_hourly.cost_micro_usd + EXCLUDED.cost_micro_usd;
    DELETE FROM fallback_hourly WHERE attempts = 0;
    RETURN true;
END $$;

-- Rows already stored: their contribution, as if each had just been written.
DO $$
BEGIN
    EXECUTE dashboard_fallback_chain_delta(
        'SELECT 1 AS sign, a.request_id, a.attempt_no, a.model, a.status, a.cost_micro_usd, a.next_model,'
        ' a.next_reason_kind FROM request_attempts a');
END $$;
SELECT dashboard_fold_fallback_rollup();
