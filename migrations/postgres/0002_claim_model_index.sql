-- Brings a tasks table made by the first release of 0001 up to today's 0001, which later gained the
-- loaded-model claim index, the queue's autovacuum settings, and a requeue-only NOTIFY trigger.
-- Every statement is idempotent, so on a table made by today's 0001 this changes nothing.

ALTER TABLE tasks SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.01);

CREATE INDEX IF NOT EXISTS tasks_claimable_model_idx ON tasks (priority, (params ->> 'model'), created_at)
    WHERE status = 'Queued';

-- The first trigger also notified on every completion (one notification per listener per task).
DROP TRIGGER IF EXISTS tasks_notify_on_ready ON tasks;
DROP TRIGGER IF EXISTS tasks_notify_on_requeue ON tasks;
CREATE TRIGGER tasks_notify_on_requeue AFTER UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN (NEW.status = 'Queued' AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION tasks_notify_workers();
