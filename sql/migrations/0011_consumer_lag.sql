-- Consumer lag per partition as each worker last saw it: {"topic": {"partition": messages behind}}, written with
-- the heartbeat (the local broker's ListOffsets answers are wrong, so lag comes from the fetch responses' high
-- watermark and the offsets the worker has committed, as Faust's monitor tracks them).
ALTER TABLE worker_heartbeats ADD COLUMN IF NOT EXISTS lag jsonb NOT NULL DEFAULT '{}'::jsonb;
