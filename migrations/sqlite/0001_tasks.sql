-- The tasks table: the public contract (README: "The `tasks` table"), in SQLite's types.
-- uuid -> text (lower-case, hyphenated), jsonb -> JSON text, uuid[] -> JSON array text,
-- timestamptz -> UTC text 'YYYY-MM-DD HH:MM:SS.SSS' from the database clock (sorts as time).

CREATE TABLE tasks (
    id                      TEXT PRIMARY KEY NOT NULL DEFAULT (
                                lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4'
                                || substr(lower(hex(randomblob(2))), 2) || '-'
                                || substr('89ab', 1 + (abs(random()) % 4), 1)
                                || substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))),
    task_type               TEXT NOT NULL,
    params                  TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
    status                  TEXT NOT NULL DEFAULT 'Queued'
                            CHECK (status IN ('Queued', 'In Progress', 'Complete', 'Failed', 'Cancelled')),
    priority                INTEGER NOT NULL DEFAULT 0,
    dependant_on            TEXT NOT NULL DEFAULT '[]'
                            CHECK (json_valid(dependant_on) AND json_type(dependant_on) = 'array'),
    parent_task_id          TEXT REFERENCES tasks (id) ON DELETE CASCADE,
    project_id              TEXT,
    attempts                INTEGER NOT NULL DEFAULT 0,
    max_attempts            INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    run_after               TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    worker_id               TEXT,
    heartbeat_at            TEXT,
    progress                TEXT CHECK (progress IS NULL OR json_valid(progress)),
    output_location         TEXT,
    result_data             TEXT CHECK (result_data IS NULL OR json_valid(result_data)),
    error_message           TEXT,
    created_at              TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at              TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    generation_started_at   TEXT,
    generation_processed_at TEXT
);

-- The claim scans only queued rows, best first.
CREATE INDEX tasks_claimable_idx ON tasks (priority DESC, created_at) WHERE status = 'Queued';

-- ... and, at one priority, the oldest queued row for the model a worker has loaded.
CREATE INDEX tasks_claimable_model_idx ON tasks (priority, json_extract(params, '$.model'), created_at)
    WHERE status = 'Queued';

-- Lease rescue scans only running rows by heartbeat age.
CREATE INDEX tasks_in_progress_idx ON tasks (heartbeat_at) WHERE status = 'In Progress';

-- An orchestrator's children are unique per child_key, so a re-run planner never duplicates them.
-- Its leading column also serves every lookup by parent_task_id.
CREATE UNIQUE INDEX tasks_parent_child_key_idx ON tasks (parent_task_id, json_extract(params, '$.child_key'))
    WHERE parent_task_id IS NOT NULL;

-- `wan-worker status` lists recent rows.
CREATE INDEX tasks_created_at_idx ON tasks (created_at);

-- updated_at follows every change, whoever makes it, unless the change set it itself.
CREATE TRIGGER tasks_touch_updated_at AFTER UPDATE ON tasks
    FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at
BEGIN
    UPDATE tasks SET updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = NEW.id;
END;
