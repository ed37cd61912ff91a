-- "Parked" (an orchestrator waiting for its children: In Progress without a worker or a lease) is
-- named once. Queries write `p.is_parked`, which Postgres reads as is_parked(p); SQLite has the same
-- name as a virtual column (migrations/sqlite/0003_parked_predicate.sql), so the queries of both
-- dialects say it the same way. The function is inlined by the planner (a single SQL expression).
CREATE FUNCTION is_parked(t tasks) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT t.status = 'In Progress' AND t.worker_id IS NULL AND t.heartbeat_at IS NULL
$$;
