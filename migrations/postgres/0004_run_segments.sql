-- Finds the segments of a travel run the headless orchestrator wrote (query run_segments), which name
-- their run in params rather than in parent_task_id, without reading every row of the table.
CREATE INDEX tasks_run_segments_idx ON tasks ((params ->> 'orchestrator_run_id'))
    WHERE task_type = 'travel_segment';
