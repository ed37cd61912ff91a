-- Task ids are UUIDs in both dialects. Postgres's uuid type guarantees it; SQLite stores text, and a
-- row with id '../../x' would name an output folder outside --output-dir. SQLite cannot add a CHECK
-- to an existing table without rebuilding it (and every index and trigger on it), so triggers
-- refuse a non-UUID id on insert and any change of an id; rows that already hold one and have not
-- ended are failed here, with a message, since no worker may run them.

UPDATE tasks
SET status = 'Failed',
    error_message = 'id is not a lower-case hyphenated UUID; such a row cannot be run (re-insert it with a UUID)',
    generation_processed_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    worker_id = NULL, heartbeat_at = NULL
WHERE status IN ('Queued', 'In Progress')
  AND NOT id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]';

CREATE TRIGGER tasks_id_is_a_uuid BEFORE INSERT ON tasks
    FOR EACH ROW WHEN NOT NEW.id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
BEGIN
    SELECT RAISE(ABORT, 'tasks.id must be a lower-case hyphenated UUID');
END;

CREATE TRIGGER tasks_id_is_immutable BEFORE UPDATE OF id ON tasks
    FOR EACH ROW WHEN NEW.id IS NOT OLD.id
BEGIN
    SELECT RAISE(ABORT, 'tasks.id cannot change');
END;
