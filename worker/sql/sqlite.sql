-- Every query the worker runs against SQLite, by name (same names and meaning as postgres.sql).
-- worker/db.py loads this file; each query starts at a `-- name: <query> --` header followed by a
-- one-line description. Every transaction starts with BEGIN IMMEDIATE (worker/db.py), so the write
-- lock is taken up front and a claim is atomic across processes.
-- The database clock is the only clock: strftime('%Y-%m-%d %H:%M:%f', 'now') is UTC with
-- milliseconds and sorts as time. Writes after a claim are fenced on the claim:
-- `worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress'`.

-- name: lock_schema_migrations --
-- BEGIN IMMEDIATE already holds the write lock; this only touches the database inside it.
SELECT 1;

-- name: create_schema_migrations --
-- The ledger of applied migrations; the runner creates it before reading it.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);

-- name: schema_migrations_exists --
-- Whether the ledger exists, read without creating it (a worker's role may lack DDL rights).
SELECT count(*) > 0 AS present FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations';

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
VALUES (:id, :task_type, :params, :priority, :dependant_on, :parent_task_id, :project_id, :max_attempts,
        :resolved_model);

-- name: get_task --
-- One row by id.
SELECT * FROM tasks WHERE id = :id;

-- name: children --
-- The rows an orchestrator created, in creation order.
SELECT * FROM tasks
WHERE parent_task_id = :parent_id
ORDER BY created_at, json_extract(params, '$.child_key');

-- name: run_segments --
-- The finished segments of a travel run the headless orchestrator wrote: it names the run in each
-- segment's params (orchestrator_run_id, orchestrator_task_id_ref), not in parent_task_id. Newest
-- first, so where a segment was made twice the caller keeps the newest.
SELECT * FROM tasks
WHERE task_type = 'travel_segment'
  AND CAST(json_extract(params, '$.orchestrator_run_id') AS TEXT) = :run_id
  AND CAST(json_extract(params, '$.orchestrator_task_id_ref') AS TEXT) = :orchestrator_ref
  AND status = 'Complete'
ORDER BY generation_processed_at IS NULL, generation_processed_at DESC, updated_at DESC;

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
-- `head` walks the claim index (priority, age) to the first ready row; the second subquery looks for
-- a row of the loaded model only when the head is neither starved nor for that model. Both stop at
-- their first match, so a claim costs the same with 10 or 100,000 rows queued (rows ahead of it that
-- this worker may not take, such as types left queued for other workers, are walked past). INDEXED BY pins the
-- plan (SQLite's planner may otherwise prefer a full scan and a sort once ANALYZE has run). The
-- readiness conditions are written out in both on purpose: each subquery walks its own index.
UPDATE tasks
SET status = 'In Progress',
    worker_id = :worker_id,
    heartbeat_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    attempts = attempts + 1,
    generation_started_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = (
    WITH head AS (
        SELECT t.id, t.priority, t.created_at, coalesce(t.resolved_model, json_extract(t.params, '$.model')) AS model
        FROM tasks t INDEXED BY tasks_claimable_idx
        WHERE t.status = 'Queued'
          AND t.run_after <= strftime('%Y-%m-%d %H:%M:%f', 'now')
          AND (:task_types IS NULL OR t.task_type IN (SELECT value FROM json_each(:task_types)))
          AND t.task_type NOT IN (SELECT value FROM json_each(:left_queued))
          AND NOT EXISTS (
              SELECT 1
              FROM json_each(t.dependant_on) AS dependency
              LEFT JOIN tasks d ON d.id = dependency.value
              WHERE d.status IS NOT 'Complete')
        ORDER BY t.priority DESC, t.created_at
        LIMIT 1
    )
    SELECT coalesce(
        (SELECT t.id
         FROM tasks t INDEXED BY tasks_claimable_model_idx
         WHERE EXISTS (SELECT 1 FROM head
                       WHERE head.created_at > strftime('%Y-%m-%d %H:%M:%f', 'now',
                                                        printf('-%.3f seconds', :affinity_max_wait_seconds))
                         AND head.model IS NOT :loaded_model)
           AND t.priority = (SELECT priority FROM head)
           AND coalesce(t.resolved_model, json_extract(t.params, '$.model')) = :loaded_model
           AND t.status = 'Queued'
           AND t.run_after <= strftime('%Y-%m-%d %H:%M:%f', 'now')
           AND (:task_types IS NULL OR t.task_type IN (SELECT value FROM json_each(:task_types)))
           AND t.task_type NOT IN (SELECT value FROM json_each(:left_queued))
           AND NOT EXISTS (
               SELECT 1
               FROM json_each(t.dependant_on) AS dependency
               LEFT JOIN tasks d ON d.id = dependency.value
               WHERE d.status IS NOT 'Complete')
         ORDER BY t.created_at
         LIMIT 1),
        (SELECT id FROM head)))
RETURNING *;

-- name: heartbeat --
-- Extends the lease of a row this worker still holds.
UPDATE tasks SET heartbeat_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = :id AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress'
RETURNING id;

-- name: live_claims_of_worker --
-- Rows held under a worker id with a heartbeat younger than the lease: at start-up, a sign that
-- another live process uses the same id.
SELECT id, heartbeat_at FROM tasks
WHERE worker_id = :worker_id AND status = 'In Progress'
  AND heartbeat_at >= strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%.3f seconds', :lease_seconds));

-- name: task_status --
-- Status alone, to tell a cancelled row from a lost lease.
SELECT status FROM tasks WHERE id = :id;

-- name: set_progress --
-- Progress of a running row (fenced).
UPDATE tasks SET progress = :progress
WHERE id = :id AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress';

-- name: complete --
-- Success (fenced): the artifact path and result data; progress reads 100 %.
UPDATE tasks
SET status = 'Complete', output_location = :output_location, result_data = :result_data,
    error_message = NULL, generation_processed_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    progress = json_set(coalesce(progress, '{}'), '$.phase', 'complete', '$.percent', 100)
WHERE id = :id AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress';

-- name: fail --
-- Permanent failure (fenced), with an operator-readable message.
UPDATE tasks
SET status = 'Failed', error_message = :message,
    generation_processed_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = :id AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress';

-- name: retry_later --
-- Transient failure (fenced): back to Queued, claimable again after the backoff delay.
UPDATE tasks
SET status = 'Queued', worker_id = NULL, heartbeat_at = NULL, error_message = :message,
    run_after = strftime('%Y-%m-%d %H:%M:%f', 'now', printf('+%.3f seconds', :delay_seconds))
WHERE id = :id AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress';

-- name: release --
-- Shutdown (fenced): back to Queued at once, and the claim does not count as an attempt.
UPDATE tasks
SET status = 'Queued', worker_id = NULL, heartbeat_at = NULL, attempts = attempts - 1
WHERE id = :id AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress';

-- name: lock_held_task --
-- The row this worker holds (fenced); BEGIN IMMEDIATE already locks the database.
SELECT * FROM tasks
WHERE id = :id AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress';

-- name: child_keys --
-- An orchestrator's existing children: child_key, status and dependencies.
SELECT id, json_extract(params, '$.child_key') AS child_key, status, dependant_on FROM tasks
WHERE parent_task_id = :parent_id
ORDER BY created_at, json_extract(params, '$.child_key');

-- name: requeue_ended_children --
-- The retry of a job (its orchestrator re-queued after it ended): children that Failed or were
-- Cancelled go back to the queue as new, with their attempts reset; Complete ones are kept.
UPDATE tasks
SET status = 'Queued', attempts = 0, worker_id = NULL, heartbeat_at = NULL, progress = NULL,
    output_location = NULL, result_data = NULL, error_message = NULL,
    run_after = strftime('%Y-%m-%d %H:%M:%f', 'now'), generation_started_at = NULL, generation_processed_at = NULL
WHERE parent_task_id = :parent_id AND status IN ('Failed', 'Cancelled')
RETURNING id;

-- name: complete_from_child --
-- The retry of a job whose children all completed: the orchestrator this worker holds (fenced)
-- completes again at once, keeping its own output if it still has one, else taking its last child's.
UPDATE tasks AS p
SET status = 'Complete', output_location = coalesce(p.output_location, c.output_location),
    result_data = coalesce(p.result_data, c.result_data), error_message = NULL,
    progress = json_object('phase', 'complete', 'percent', 100),
    generation_processed_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
FROM tasks AS c
WHERE p.id = :id AND p.worker_id = :worker_id AND p.attempts = :attempt AND p.status = 'In Progress'
  AND c.id = :child_id AND c.parent_task_id = p.id;

-- name: park --
-- An orchestrator waits for its children: In Progress without a worker or a lease, so no lease
-- rescue touches it; a child's failure or the last child (travel_stitch) ends it.
UPDATE tasks SET worker_id = NULL, heartbeat_at = NULL, progress = :progress
WHERE id = :id AND worker_id = :worker_id AND attempts = :attempt AND status = 'In Progress';

-- name: complete_parked --
-- Success of a parked orchestrator, written by the child that finishes the job: fenced on that child
-- (this worker holds it), and only a parked parent, never a row some worker holds.
UPDATE tasks AS p
SET status = 'Complete', output_location = :output_location, result_data = :result_data,
    error_message = NULL, generation_processed_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    progress = json_set(coalesce(p.progress, '{}'), '$.phase', 'complete', '$.percent', 100)
FROM tasks AS c
WHERE c.id = :id AND c.worker_id = :worker_id AND c.attempts = :attempt AND c.status = 'In Progress'
  AND p.id = c.parent_task_id
  AND p.is_parked;

-- name: set_parent_progress --
-- Progress of a parked orchestrator, written by a child this worker holds (fenced on the child);
-- only a parked parent: never a row some worker holds.
UPDATE tasks AS p SET progress = :progress
FROM tasks AS c
WHERE c.id = :id AND c.worker_id = :worker_id AND c.attempts = :attempt AND c.status = 'In Progress'
  AND p.id = c.parent_task_id
  AND p.is_parked;

-- name: cancel --
-- A backend's or operator's cancellation of a row that has not ended; the cascade reaches its
-- children and dependants.
UPDATE tasks SET status = 'Cancelled', generation_processed_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = :id AND status IN ('Queued', 'In Progress')
RETURNING id;

-- name: requeue_expired --
-- Lease rescue: running rows whose heartbeat is older than the lease go back to Queued, or to Failed
-- when their attempts are used up. Parked orchestrators (no worker, no heartbeat) are never touched.
-- A row some other program set 'In Progress' with only a worker_id (no heartbeat) is held since its
-- last change: its lease runs from updated_at, so it cannot stay In Progress for good.
UPDATE tasks
SET status = CASE WHEN attempts >= max_attempts THEN 'Failed' ELSE 'Queued' END,
    error_message = CASE
        WHEN attempts >= max_attempts
        THEN printf('lease expired on attempt %d of %d; last worker %s', attempts, max_attempts, worker_id)
        ELSE printf('lease expired on attempt %d of %d (worker %s); requeued', attempts, max_attempts, worker_id)
    END,
    generation_processed_at = CASE WHEN attempts >= max_attempts
                                   THEN strftime('%Y-%m-%d %H:%M:%f', 'now') END,
    worker_id = NULL,
    heartbeat_at = NULL
WHERE status = 'In Progress' AND NOT is_parked
  AND coalesce(heartbeat_at, updated_at)
      < strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%.3f seconds', :lease_seconds))
RETURNING id, status;

-- name: end_dependants_of_ended --
-- A Queued row with a Failed or Cancelled dependency ends with the same status, naming it
-- (the oldest such dependency when there are several).
UPDATE tasks AS t
SET status = doomed.dependency_status,
    error_message = CASE doomed.dependency_status
        WHEN 'Failed' THEN printf('dependency %s (%s) failed: %s', doomed.dependency_id,
                                  doomed.dependency_type, coalesce(doomed.dependency_error, 'no message'))
        ELSE printf('dependency %s (%s) was cancelled', doomed.dependency_id, doomed.dependency_type)
    END,
    generation_processed_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
FROM (
    SELECT queued.id, d.id AS dependency_id, d.task_type AS dependency_type,
           d.status AS dependency_status, d.error_message AS dependency_error,
           row_number() OVER (PARTITION BY queued.id ORDER BY d.created_at, d.id) AS rank
    FROM tasks queued
    JOIN json_each(queued.dependant_on) AS dependency
    JOIN tasks d ON d.id = dependency.value
    WHERE queued.status = 'Queued' AND d.status IN ('Failed', 'Cancelled')
) AS doomed
WHERE t.id = doomed.id AND doomed.rank = 1 AND t.status = 'Queued'
RETURNING id;

-- name: end_parked_parents_of_ended --
-- A parked orchestrator whose child Failed or was Cancelled ends with the same status, naming it.
UPDATE tasks AS p
SET status = doomed.child_status,
    error_message = CASE doomed.child_status
        WHEN 'Failed' THEN printf('child %s (%s) failed: %s', doomed.child_id, doomed.child_type,
                                  coalesce(doomed.child_error, 'no message'))
        ELSE printf('child %s (%s) was cancelled', doomed.child_id, doomed.child_type)
    END,
    generation_processed_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
FROM (
    SELECT parked.id, c.id AS child_id, c.task_type AS child_type,
           c.status AS child_status, c.error_message AS child_error,
           row_number() OVER (PARTITION BY parked.id ORDER BY c.updated_at, c.id) AS rank
    FROM tasks parked
    JOIN tasks c ON c.parent_task_id = parked.id
    WHERE parked.is_parked
      AND c.status IN ('Failed', 'Cancelled')
) AS doomed
WHERE p.id = doomed.id AND doomed.rank = 1
  AND p.is_parked
RETURNING id;

-- name: cancel_children_of_ended --
-- Children still Queued or In Progress under a Failed or Cancelled parent are Cancelled (a running one
-- notices at its next heartbeat).
UPDATE tasks AS c
SET status = 'Cancelled',
    error_message = printf('parent %s (%s) %s', p.id, p.task_type,
                           CASE p.status WHEN 'Failed' THEN 'failed' ELSE 'was cancelled' END),
    generation_processed_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
FROM tasks AS p
WHERE c.parent_task_id = p.id AND p.status IN ('Failed', 'Cancelled')
  AND c.status IN ('Queued', 'In Progress')
RETURNING id;

-- name: queued_dependency_edges --
-- Dependencies between Queued rows (task -> dependency), for finding cycles, which would wait forever.
-- Only edges between waiting rows: linear in the queue, not in the history.
SELECT t.id AS task_id, d.id AS dependency_id
FROM tasks t
JOIN json_each(t.dependant_on) AS dependency
JOIN tasks d ON d.id = dependency.value
WHERE t.status = 'Queued' AND d.status = 'Queued';

-- name: fail_queued --
-- Ends a Queued row that can never run (a dependency cycle), with the reason.
UPDATE tasks SET status = 'Failed', error_message = :message,
    generation_processed_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = :id AND status = 'Queued'
RETURNING id;

-- name: fail_orphaned_parked_parents --
-- A parked orchestrator that no child can finish ends Failed: it has no child left Queued or In
-- Progress (rows were deleted: the stitch, or every child), or a Queued child waits for a sibling
-- that no longer exists. Parents with a Failed or Cancelled child are left to the cascade, which
-- names that child.
UPDATE tasks AS p
SET status = 'Failed',
    error_message = CASE
        WHEN orphaned.missing_sibling IS NOT NULL
        THEN printf('the job cannot finish: %s', orphaned.missing_sibling)
        WHEN orphaned.children = 0
        THEN 'the job cannot finish: it is parked but has no children (deleted?)'
        ELSE printf('the job cannot finish: no child is left to complete it (%d remain, all Complete; '
                    || 'its last child, e.g. the travel_stitch, was deleted)', orphaned.children)
    END,
    generation_processed_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
FROM (
    SELECT parked.id,
           (SELECT printf('child %s (%s) waits for %s, which no longer exists (deleted)', c.id, c.task_type,
                          dependency.value)
            FROM tasks c
            JOIN json_each(c.dependant_on) AS dependency
            LEFT JOIN tasks d ON d.id = dependency.value
            WHERE c.parent_task_id = parked.id AND c.status = 'Queued' AND d.id IS NULL
            ORDER BY c.created_at, c.id
            LIMIT 1) AS missing_sibling,
           (SELECT count(*) FROM tasks c WHERE c.parent_task_id = parked.id) AS children,
           EXISTS (SELECT 1 FROM tasks c WHERE c.parent_task_id = parked.id
                   AND c.status IN ('Queued', 'In Progress')) AS has_live_child
    FROM tasks parked
    WHERE parked.is_parked
      AND NOT EXISTS (SELECT 1 FROM tasks c WHERE c.parent_task_id = parked.id
                      AND c.status IN ('Failed', 'Cancelled'))
) AS orphaned
WHERE p.id = orphaned.id AND p.is_parked
  AND (orphaned.missing_sibling IS NOT NULL OR NOT orphaned.has_live_child)
RETURNING id;

-- name: queued_models_to_resolve --
-- Queued rows a backend inserted that name their model in a way the claim cannot compare (a preset,
-- the headless model_name), for maintenance to resolve (worker/model_keys.py); a batch per pass.
SELECT id, params FROM tasks
WHERE status = 'Queued' AND resolved_model IS NULL
  AND (json_type(params, '$.preset') IS NOT NULL OR json_type(params, '$.model_name') IS NOT NULL
       OR json_type(params, '$.orchestrator_details') IS NOT NULL)
LIMIT :limit;

-- name: set_resolved_model --
-- The model a Queued row will run, once resolved.
UPDATE tasks SET resolved_model = :resolved_model
WHERE id = :id AND resolved_model IS NULL;
