-- Brings a tasks table made by the first release of 0001 up to today's 0001, which later gained the
-- loaded-model claim index (the claim names it with INDEXED BY, so without it every claim fails).
-- Idempotent: on a table made by today's 0001 this changes nothing.

CREATE INDEX IF NOT EXISTS tasks_claimable_model_idx
    ON tasks (priority, json_extract(params, '$.model'), created_at)
    WHERE status = 'Queued';
