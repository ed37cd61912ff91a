-- Every query the worker runs against Postgres, by name. worker/db.py loads this file; each query
-- starts at a `-- name: <query> --` header followed by a one-line description.
-- The database clock (now()) is the only clock. Writes after a claim are fenced on the claim:
-- `worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress'`. The attempt number is
-- the claim's token, so a worker that lost its lease changes nothing, even when a process with the
-- same worker_id holds the row's next claim.

-- name: lock_schema_migrations --
-- Serialises concurrent `migrate` runs (a fleet starting at once) until the transaction ends.
SELECT pg_advisory_xact_lock(hashtext('wan_worker.schema_migrations'));

-- name: create_schema_migrations --
-- The ledger of applied migrations; the runner creates it before reading it.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: schema_migrations_exists --
-- Whether the ledger exists, read without creating it (a worker's role may lack DDL rights).
SELECT to_regclass('schema_migrations') IS NOT NULL AS present;

-- name: applied_migrations --
-- Versions already applied.
SELECT version FROM schema_migrations ORDER BY version;

-- name: record_migration --
-- Marks one migration as applied, in the transaction that applied it.
INSERT INTO schema_migrations (version, name) VALUES (:version, :name);

-- name: insert_task --
-- One new Queued row; the caller makes the id so that rows inserted together can depend on each other.
INSERT INTO tasks (id, task_type, params, priority, dependant_on, parent_task_id, project_id, max_attempts,
                   resolved_model)
VALUES (CAST(:id AS uuid), :task_type, CAST(:params AS jsonb), :priority, CAST(:dependant_on AS uuid[]),
        CAST(:parent_task_id AS uuid), :project_id, :max_attempts, :resolved_model);

-- name: get_task --
-- One row by id.
SELECT * FROM tasks WHERE id = CAST(:id AS uuid);

-- name: children --
-- The rows an orchestrator created, in creation order.
SELECT * FROM tasks
WHERE parent_task_id = CAST(:parent_id AS uuid)
ORDER BY created_at, params ->> 'child_key';

-- name: run_segments --
-- The finished segments of a travel run the headless orchestrator wrote: it names the run in each
-- segment's params (orchestrator_run_id, orchestrator_task_id_ref), not in parent_task_id. Newest
-- first, so where a segment was made twice the caller keeps the newest.
SELECT * FROM tasks
WHERE task_type = 'travel_segment'
  AND params ->> 'orchestrator_run_id' = :run_id
  AND params ->> 'orchestrator_task_id_ref' = :orchestrator_ref
  AND status = 'Complete'
ORDER BY generation_processed_at DESC NULLS LAST, updated_at DESC;

-- name: recent_tasks --
-- The newest rows, for `wan-worker status`.
SELECT * FROM tasks ORDER BY created_at DESC, id LIMIT :limit;

-- name: count_by_status --
-- How many rows are in each status.
SELECT status, count(*) AS n FROM tasks GROUP BY status;

-- name: queued_by_type --
-- How many Queued rows there are of each task type.
SELECT task_type, count(*) AS n FROM tasks WHERE status = 'Queued' GROUP BY task_type;

-- name: claim --
-- Takes the best ready row for this worker in one statement and marks it In Progress.
-- Ready: Queued, run_after reached, a task_type this worker accepts (NULL = any but those it leaves
-- queued), every dependency Complete (a dependency id with no row keeps it waiting). Best: the
-- highest priority; within it, the oldest row if it waited longer than the affinity bound (so no model
-- starves), else the oldest row for the model this worker already has loaded, else the oldest row.
-- `head` walks the claim index (priority, age) to the first ready row nobody else is locking;
-- `same_model` looks for a row of the loaded model only when the head is neither starved nor
-- for the loaded model. Both stop at their first match, so a claim costs the same with 10 or 100,000
-- rows queued (rows ahead of it that this worker may not take, such as types left queued for other
-- workers, are walked past). The readiness conditions are written out in both on purpose: each subquery walks its
-- own index (tasks_claimable_idx, tasks_claimable_model_idx), which one shared CTE of ready rows could not.
WITH head AS (
    SELECT t.id, t.priority, t.created_at, coalesce(t.resolved_model, t.params ->> 'model') AS model
    FROM tasks t
    WHERE t.status = 'Queued'
      AND t.run_after <= now()
      AND (CAST(:task_types AS text[]) IS NULL OR t.task_type = ANY (CAST(:task_types AS text[])))
      AND t.task_type <> ALL (CAST(:left_queued AS text[]))
      AND NOT EXISTS (
          SELECT 1
          FROM unnest(t.dependant_on) AS dependency (id)
          LEFT JOIN tasks d ON d.id = dependency.id
          WHERE d.status IS DISTINCT FROM 'Complete')
    ORDER BY t.priority DESC, t.created_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), same_model AS (
    SELECT t.id
    FROM tasks t
    WHERE EXISTS (SELECT 1 FROM head
                  WHERE head.created_at > now() - make_interval(secs => :affinity_max_wait_seconds)
                    AND head.model IS DISTINCT FROM :loaded_model)
      AND t.priority = (SELECT priority FROM head)
      AND coalesce(t.resolved_model, t.params ->> 'model') = :loaded_model
      AND t.status = 'Queued'
      AND t.run_after <= now()
      AND (CAST(:task_types AS text[]) IS NULL OR t.task_type = ANY (CAST(:task_types AS text[])))
      AND t.task_type <> ALL (CAST(:left_queued AS text[]))
      AND NOT EXISTS (
          SELECT 1
          FROM unnest(t.dependant_on) AS dependency (id)
          LEFT JOIN tasks d ON d.id = dependency.id
          WHERE d.status IS DISTINCT FROM 'Complete')
    ORDER BY t.created_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks t
SET status = 'In Progress',
    worker_id = :worker_id,
    heartbeat_at = now(),
    attempts = t.attempts + 1,
    generation_started_at = now()
WHERE t.id = coalesce((SELECT id FROM same_model), (SELECT id FROM head))
RETURNING t.*;

-- name: heartbeat --
-- Extends the lease of a row this worker still holds.
UPDATE tasks SET heartbeat_at = now()
WHERE id = CAST(:id AS uuid) AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress'
RETURNING id;

-- name: live_claims_of_worker --
-- Rows held under a worker id with a heartbeat younger than the lease: at start-up, a sign that
-- another live process uses the same id.
SELECT id, heartbeat_at FROM tasks
WHERE worker_id = :worker_id AND status = 'In Progress'
  AND heartbeat_at >= now() - make_interval(secs => :lease_seconds);

-- name: task_status --
-- Status alone, to tell a cancelled row from a lost lease.
SELECT status FROM tasks WHERE id = CAST(:id AS uuid);

-- name: set_progress --
-- Progress of a running row (fenced).
UPDATE tasks SET progress = CAST(:progress AS jsonb)
WHERE id = CAST(:id AS uuid) AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress';

-- name: complete --
-- Success (fenced): the artifact path and result data; progress reads 100 %.
UPDATE tasks
SET status = 'Complete', output_location = :output_location, result_data = CAST(:result_data AS jsonb),
    error_message = NULL, generation_processed_at = now(), progress = coalesce(progress, '{}'::jsonb) || jsonb_build_object('phase', 'complete', 'percent', 100)
WHERE id = CAST(:id AS uuid) AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress';

-- name: fail --
-- Permanent failure (fenced), with an operator-readable message.
UPDATE tasks
SET status = 'Failed', error_message = :message, generation_processed_at = now()
WHERE id = CAST(:id AS uuid) AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress';

-- name: retry_later --
-- Transient failure (fenced): back to Queued, claimable again after the backoff delay.
UPDATE tasks
SET status = 'Queued', worker_id = NULL, heartbeat_at = NULL, error_message = :message,
    run_after = now() + make_interval(secs => :delay_seconds)
WHERE id = CAST(:id AS uuid) AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress';

-- name: release --
-- Shutdown (fenced): back to Queued at once, and the claim does not count as an attempt.
UPDATE tasks
SET status = 'Queued', worker_id = NULL, heartbeat_at = NULL, attempts = attempts - 1
WHERE id = CAST(:id AS uuid) AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress';

-- name: lock_held_task --
-- The row this worker holds, locked for a multi-statement change (fenced).
SELECT * FROM tasks
WHERE id = CAST(:id AS uuid) AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress'
FOR UPDATE;

-- name: child_keys --
-- An orchestrator's existing children: child_key, status and dependencies.
SELECT id, params ->> 'child_key' AS child_key, status, dependant_on FROM tasks
WHERE parent_task_id = CAST(:parent_id AS uuid)
ORDER BY created_at, params ->> 'child_key';

-- name: requeue_ended_children --
-- The retry of a job (its orchestrator re-queued after it ended): children that Failed or were
-- Cancelled go back to the queue as new, with their attempts reset; Complete ones are kept.
UPDATE tasks
SET status = 'Queued', attempts = 0, worker_id = NULL, heartbeat_at = NULL, progress = NULL,
    output_location = NULL, result_data = NULL, error_message = NULL, run_after = now(),
    generation_started_at = NULL, generation_processed_at = NULL
WHERE parent_task_id = CAST(:parent_id AS uuid) AND status IN ('Failed', 'Cancelled')
RETURNING id;

-- name: complete_from_child --
-- The retry of a job whose children all completed: the orchestrator this worker holds (fenced)
-- completes again at once, keeping its own output if it still has one, else taking its last child's.
UPDATE tasks p
SET status = 'Complete', output_location = coalesce(p.output_location, c.output_location),
    result_data = coalesce(p.result_data, c.result_data), error_message = NULL,
    progress = jsonb_build_object('phase', 'complete', 'percent', 100), generation_processed_at = now()
FROM tasks c
WHERE p.id = CAST(:id AS uuid) AND p.worker_id = :worker_id AND p.attempts = :attempt AND p.status = 'In Progress'
  AND c.id = CAST(:child_id AS uuid) AND c.parent_task_id = p.id;

-- name: park --
-- An orchestrator waits for its children: In Progress without a worker or a lease, so no lease
-- rescue touches it; a child's failure or the last child (travel_stitch) ends it.
UPDATE tasks SET worker_id = NULL, heartbeat_at = NULL, progress = CAST(:progress AS jsonb)
WHERE id = CAST(:id AS uuid) AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress';

-- name: complete_parked --
-- Success of a parked orchestrator, written by the child that finishes the job: fenced on that child
-- (this worker holds it), and only a parked parent, never a row some worker holds.
UPDATE tasks p
SET status = 'Complete', output_location = :output_location, result_data = CAST(:result_data AS jsonb),
    error_message = NULL, generation_processed_at = now(),
    progress = coalesce(p.progress, '{}'::jsonb) || jsonb_build_object('phase', 'complete', 'percent', 100)
FROM tasks c
WHERE c.id = CAST(:id AS uuid) AND c.worker_id = :worker_id AND c.attempts = :attempt AND c.status = 'In Progress'
  AND p.id = c.parent_task_id
  AND p.is_parked;

-- name: set_parent_progress --
-- Progress of a parked orchestrator, written by a child this worker holds (fenced on the child);
-- only a parked parent: never a row some worker holds.
UPDATE tasks p SET progress = CAST(:progress AS jsonb)
FROM tasks c
WHERE c.id = CAST(:id AS uuid) AND c.worker_id = :worker_id AND c.attempts = :attempt AND c.status = 'In Progress'
  AND p.id = c.parent_task_id
  AND p.is_parked;

-- name: cancel --
-- A backend's or operator's cancellation of a row that has not ended; the cascade reaches its
-- children and dependants.
UPDATE tasks SET status = 'Cancelled', generation_processed_at = now()
WHERE id = CAST(:id AS uuid) AND status IN ('Queued', 'In Progress')
RETURNING id;

-- name: requeue_expired --
-- Lease rescue: running rows whose heartbeat is older than the lease go back to Queued, or to Failed
-- when their attempts are used up. Parked orchestrators (no worker, no heartbeat) are never touched.
-- A row some other program set 'In Progress' with only a worker_id (no heartbeat) is held since its
-- last change: its lease runs from updated_at, so it cannot stay In Progress for good.
WITH expired AS (
    SELECT t.id FROM tasks t
    WHERE t.status = 'In Progress' AND NOT t.is_parked
      AND coalesce(t.heartbeat_at, t.updated_at) < now() - make_interval(secs => :lease_seconds)
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks t
SET status = CASE WHEN t.attempts >= t.max_attempts THEN 'Failed' ELSE 'Queued' END,
    error_message = CASE
        WHEN t.attempts >= t.max_attempts
        THEN format('lease expired on attempt %s of %s; last worker %s', t.attempts, t.max_attempts, t.worker_id)
        ELSE format('lease expired on attempt %s of %s (worker %s); requeued', t.attempts, t.max_attempts, t.worker_id)
    END,
    generation_processed_at = CASE WHEN t.attempts >= t.max_attempts THEN now() END,
    worker_id = NULL,
    heartbeat_at = NULL
FROM expired
WHERE t.id = expired.id
RETURNING t.id, t.status;

-- name: end_dependants_of_ended --
-- A Queued row with a Failed or Cancelled dependency ends with the same status, naming it
-- (the oldest such dependency when there are several).
WITH doomed AS (
    SELECT DISTINCT ON (t.id) t.id, d.id AS dependency_id, d.task_type AS dependency_type,
           d.status AS dependency_status, d.error_message AS dependency_error
    FROM tasks t
    JOIN tasks d ON d.id = ANY (t.dependant_on)
    WHERE t.status = 'Queued' AND d.status IN ('Failed', 'Cancelled')
    ORDER BY t.id, d.created_at, d.id
)
UPDATE tasks t
SET status = doomed.dependency_status,
    error_message = CASE doomed.dependency_status
        WHEN 'Failed' THEN format('dependency %s (%s) failed: %s', doomed.dependency_id,
                                  doomed.dependency_type, coalesce(doomed.dependency_error, 'no message'))
        ELSE format('dependency %s (%s) was cancelled', doomed.dependency_id, doomed.dependency_type)
    END,
    generation_processed_at = now()
FROM doomed
WHERE t.id = doomed.id AND t.status = 'Queued'
RETURNING t.id;

-- name: end_parked_parents_of_ended --
-- A parked orchestrator whose child Failed or was Cancelled ends with the same status, naming it.
WITH doomed AS (
    SELECT DISTINCT ON (p.id) p.id, c.id AS child_id, c.task_type AS child_type,
           c.status AS child_status, c.error_message AS child_error
    FROM tasks p
    JOIN tasks c ON c.parent_task_id = p.id
    WHERE p.is_parked
      AND c.status IN ('Failed', 'Cancelled')
    ORDER BY p.id, c.updated_at, c.id
)
UPDATE tasks p
SET status = doomed.child_status,
    error_message = CASE doomed.child_status
        WHEN 'Failed' THEN format('child %s (%s) failed: %s', doomed.child_id, doomed.child_type,
                                  coalesce(doomed.child_error, 'no message'))
        ELSE format('child %s (%s) was cancelled', doomed.child_id, doomed.child_type)
    END,
    generation_processed_at = now()
FROM doomed
WHERE p.id = doomed.id AND p.is_parked
RETURNING p.id;

-- name: cancel_children_of_ended --
-- Children still Queued or In Progress under a Failed or Cancelled parent are Cancelled (a running one
-- notices at its next heartbeat).
UPDATE tasks c
SET status = 'Cancelled',
    error_message = format('parent %s (%s) %s', p.id, p.task_type,
                           CASE p.status WHEN 'Failed' THEN 'failed' ELSE 'was cancelled' END),
    generation_processed_at = now()
FROM tasks p
WHERE c.parent_task_id = p.id AND p.status IN ('Failed', 'Cancelled')
  AND c.status IN ('Queued', 'In Progress')
RETURNING c.id;

-- name: queued_dependency_edges --
-- Dependencies between Queued rows (task -> dependency), for finding cycles, which would wait forever.
-- Only edges between waiting rows: linear in the queue, not in the history.
SELECT t.id AS task_id, d.id AS dependency_id
FROM tasks t
CROSS JOIN unnest(t.dependant_on) AS dependency (id)
JOIN tasks d ON d.id = dependency.id
WHERE t.status = 'Queued' AND d.status = 'Queued';

-- name: fail_queued --
-- Ends a Queued row that can never run (a dependency cycle), with the reason.
UPDATE tasks SET status = 'Failed', error_message = :message, generation_processed_at = now()
WHERE id = CAST(:id AS uuid) AND status = 'Queued'
RETURNING id;

-- name: fail_orphaned_parked_parents --
-- A parked orchestrator that no child can finish ends Failed: it has no child left Queued or In
-- Progress (rows were deleted: the stitch, or every child), or a Queued child waits for a sibling
-- that no longer exists. Parents with a Failed or Cancelled child are left to the cascade, which
-- names that child.
WITH orphaned AS (
    SELECT p.id,
           (SELECT format('child %s (%s) waits for %s, which no longer exists (deleted)', c.id, c.task_type,
                          dependency.id)
            FROM tasks c
            CROSS JOIN unnest(c.dependant_on) AS dependency (id)
            LEFT JOIN tasks d ON d.id = dependency.id
            WHERE c.parent_task_id = p.id AND c.status = 'Queued' AND d.id IS NULL
            ORDER BY c.created_at, c.id
            LIMIT 1) AS missing_sibling,
           (SELECT count(*) FROM tasks c WHERE c.parent_task_id = p.id) AS children,
           EXISTS (SELECT 1 FROM tasks c WHERE c.parent_task_id = p.id
                   AND c.status IN ('Queued', 'In Progress')) AS has_live_child
    FROM tasks p
    WHERE p.is_parked
      AND NOT EXISTS (SELECT 1 FROM tasks c WHERE c.parent_task_id = p.id AND c.status IN ('Failed', 'Cancelled'))
)
UPDATE tasks p
SET status = 'Failed',
    error_message = CASE
        WHEN orphaned.missing_sibling IS NOT NULL
        THEN format('the job cannot finish: %s', orphaned.missing_sibling)
        WHEN orphaned.children = 0
        THEN 'the job cannot finish: it is parked but has no children (deleted?)'
        ELSE format('the job cannot finish: no child is left to complete it (%s remain, all Complete; '
                    'its last child, e.g. the travel_stitch, was deleted)', orphaned.children)
    END,
    generation_processed_at = now()
FROM orphaned
WHERE p.id = orphaned.id AND p.is_parked
  AND (orphaned.missing_sibling IS NOT NULL OR NOT orphaned.has_live_child)
RETURNING p.id;

-- name: queued_models_to_resolve --
-- Queued rows a backend inserted that name their model in a way the claim cannot compare (a preset,
-- the headless model_name), for maintenance to resolve (worker/model_keys.py); a batch per pass.
SELECT id, params FROM tasks
WHERE status = 'Queued' AND resolved_model IS NULL
  AND (params ? 'preset' OR params ? 'model_name' OR params ? 'orchestrator_details')
LIMIT :limit;

-- name: set_resolved_model --
-- The model a Queued row will run, once resolved.
UPDATE tasks SET resolved_model = :resolved_model
WHERE id = CAST(:id AS uuid) AND resolved_model IS NULL;
