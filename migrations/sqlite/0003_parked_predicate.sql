-- "Parked" (an orchestrator waiting for its children: In Progress without a worker or a lease) is
-- named once: a virtual column, computed when read. Postgres has the same name as a function of the
-- row (migrations/postgres/0002_parked_predicate.sql), so the queries of both dialects write
-- `p.is_parked`.
ALTER TABLE tasks ADD COLUMN is_parked INTEGER
    GENERATED ALWAYS AS (status = 'In Progress' AND worker_id IS NULL AND heartbeat_at IS NULL) VIRTUAL;
