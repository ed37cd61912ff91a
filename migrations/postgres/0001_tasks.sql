-- The tasks table: the public contract (README: "The `tasks` table").
-- Column names and status strings match the headless Wan2GP / Reigh ecosystem.

CREATE TABLE tasks (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_type               text NOT NULL,
    params                  jsonb NOT NULL DEFAULT '{}'::jsonb,
    status                  text NOT NULL DEFAULT 'Queued'
                            CHECK (status IN ('Queued', 'In Progress', 'Complete', 'Failed', 'Cancelled')),
    priority                integer NOT NULL DEFAULT 0,
    dependant_on            uuid[] NOT NULL DEFAULT '{}',
    parent_task_id          uuid REFERENCES tasks (id) ON DELETE CASCADE,
    project_id              text,
    attempts                integer NOT NULL DEFAULT 0,
    max_attempts            integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    run_after               timestamptz NOT NULL DEFAULT now(),
    worker_id               text,
    heartbeat_at            timestamptz,
    progress                jsonb,
    output_location         text,
    result_data             jsonb,
    error_message           text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    generation_started_at   timestamptz,
    generation_processed_at timestamptz
);

-- A queue table churns: every claim and completion leaves a dead row version. Vacuum and analyze it
-- after 1% of its rows changed (the default waits for 10-20%), so dead index entries stay few and the
-- planner knows how many rows are queued (with stale numbers it may sort every queued row per claim
-- instead of walking the claim index).
ALTER TABLE tasks SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.01);

-- The claim scans only queued rows, best first.
CREATE INDEX tasks_claimable_idx ON tasks (priority DESC, created_at) WHERE status = 'Queued';

-- ... and, at one priority, the oldest queued row for the model a worker has loaded.
CREATE INDEX tasks_claimable_model_idx ON tasks (priority, (params ->> 'model'), created_at)
    WHERE status = 'Queued';

-- Lease rescue scans only running rows by heartbeat age.
CREATE INDEX tasks_in_progress_idx ON tasks (heartbeat_at) WHERE status = 'In Progress';

-- An orchestrator's children are unique per child_key, so a re-run planner never duplicates them.
-- Its leading column also serves every lookup by parent_task_id.
CREATE UNIQUE INDEX tasks_parent_child_key_idx ON tasks (parent_task_id, (params ->> 'child_key'))
    WHERE parent_task_id IS NOT NULL;

-- `wan-worker status` lists recent rows.
CREATE INDEX tasks_created_at_idx ON tasks (created_at);

-- updated_at follows every change, whoever makes it (worker or backend).
CREATE FUNCTION tasks_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER tasks_touch_updated_at BEFORE UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_touch_updated_at();

-- Wake idle workers: on any insert (so a backend's plain INSERT is enough) and whenever a row becomes
-- Queued again (released, rescued). The payload (the row's task_type) is advisory; workers re-run
-- their claim on any notification. Identical payloads within one transaction are folded into one
-- notification by Postgres. A completion sends nothing: the completing worker claims again at once
-- (so a chain of dependants moves without delay), and other workers poll; notifying every listener
-- on every completion would cost more than it saves.
CREATE FUNCTION tasks_notify_workers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wan_worker_tasks', NEW.task_type);
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_notify_on_insert AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_notify_workers();

CREATE TRIGGER tasks_notify_on_requeue AFTER UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN (NEW.status = 'Queued' AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION tasks_notify_workers();
