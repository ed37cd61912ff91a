-- The model a row will run, resolved from its preset, model or headless model_name (worker/model_keys.py),
-- so the claim's model affinity sees rows that name a preset or an alias. NULL until resolved (at
-- insert by the worker, or by maintenance for a backend's rows); the claim then reads params.model.
ALTER TABLE tasks ADD COLUMN resolved_model TEXT;

DROP INDEX tasks_claimable_model_idx;
CREATE INDEX tasks_claimable_model_idx
    ON tasks (priority, coalesce(resolved_model, json_extract(params, '$.model')), created_at)
    WHERE status = 'Queued';
