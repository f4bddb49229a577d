-- What the dashboard's triggers cost a writer: 20,000 requests and their calls copied in, with every trigger, with
-- the hourly rollups' (0008) only, and with none; everything is rolled back. Run on a filled database (dashboard.sample_bulk):
--   psql -f benchmarks/rollup_trigger_cost.sql <dsn>
\timing on
BEGIN;
CREATE TEMP TABLE src AS SELECT * FROM requests ORDER BY request_id LIMIT 20000;
CREATE TEMP TABLE srca AS SELECT a.* FROM request_attempts a JOIN src USING (request_id);
UPDATE src SET request_id = request_id || '#t';
UPDATE srca SET request_id = request_id || '#t';
SAVEPOINT s;
-- with every trigger (0008 rollups + 0012 latency + 0013 fallback spend)
INSERT INTO requests SELECT * FROM src;
INSERT INTO request_attempts SELECT * FROM srca;
ROLLBACK TO SAVEPOINT s;
ALTER TABLE requests DISABLE TRIGGER latency_requests_insert;
ALTER TABLE request_attempts DISABLE TRIGGER latency_calls_insert;
ALTER TABLE request_attempts DISABLE TRIGGER fallback_rollup_attempts_insert;
-- 0008 rollups only
INSERT INTO requests SELECT * FROM src;
INSERT INTO request_attempts SELECT * FROM srca;
ROLLBACK TO SAVEPOINT s;
ALTER TABLE requests DISABLE TRIGGER USER;
ALTER TABLE request_attempts DISABLE TRIGGER USER;
-- no trigger
INSERT INTO requests SELECT * FROM src;
INSERT INTO request_attempts SELECT * FROM srca;
ROLLBACK;
