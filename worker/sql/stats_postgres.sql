-- Fleet statistics for `wan-worker stats` and the metrics endpoint, Postgres dialect. Loaded by
-- worker/stats.py; each query starts at a `-- name: <query> --` header and a one-line description.
-- Every aggregate is computed here, so the numbers cover every worker that writes to this table.
-- A row's model is the one its result names (what actually ran), else the one its params ask for.
-- :since_seconds (a look-back from the database clock) and :since_time (an absolute time) are
-- optional; NULL means no bound.

-- name: task_counts --
-- Rows per model, preset and task type, by outcome.
SELECT coalesce(result_data ->> 'model', params ->> 'model', '-') AS model,
       coalesce(result_data ->> 'preset', params ->> 'preset', '-') AS preset,
       task_type,
       count(*) AS tasks,
       count(*) FILTER (WHERE status = 'Complete') AS complete,
       count(*) FILTER (WHERE status = 'Failed') AS failed,
       count(*) FILTER (WHERE status = 'Cancelled') AS cancelled,
       count(*) FILTER (WHERE status IN ('Queued', 'In Progress')) AS pending
FROM tasks
WHERE (CAST(:since_seconds AS float8) IS NULL
       OR created_at >= now() - make_interval(secs => CAST(:since_seconds AS float8)))
  AND (CAST(:since_time AS timestamptz) IS NULL OR created_at >= CAST(:since_time AS timestamptz))
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;

-- name: phase_percentiles --
-- p50 and p90 (continuous, linear interpolation) of every phase in result_data.phase_seconds of
-- Complete rows, per model, preset, task type and phase.
SELECT coalesce(t.result_data ->> 'model', t.params ->> 'model', '-') AS model,
       coalesce(t.result_data ->> 'preset', t.params ->> 'preset', '-') AS preset,
       t.task_type,
       phase.key AS phase,
       count(*) AS samples,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY CAST(phase.value AS float8)) AS p50_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY CAST(phase.value AS float8)) AS p90_seconds
FROM tasks t
CROSS JOIN LATERAL jsonb_each(
    CASE WHEN jsonb_typeof(t.result_data -> 'phase_seconds') = 'object'
         THEN t.result_data -> 'phase_seconds' ELSE '{}'::jsonb END) AS phase
WHERE t.status = 'Complete'
  AND jsonb_typeof(phase.value) = 'number'
  AND (CAST(:since_seconds AS float8) IS NULL
       OR t.created_at >= now() - make_interval(secs => CAST(:since_seconds AS float8)))
  AND (CAST(:since_time AS timestamptz) IS NULL OR t.created_at >= CAST(:since_time AS timestamptz))
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4;

-- name: oldest_ready_task_age --
-- Seconds the longest-waiting claimable row has been claimable: Queued, run_after reached, every
-- dependency Complete; it became claimable at the latest of its creation, its run_after and its
-- last dependency's completion; of the types a worker takes (as the claim: a list or NULL for any,
-- less those it leaves queued for other workers). NULL when nothing is claimable.
SELECT EXTRACT(EPOCH FROM now() - min(greatest(
           t.created_at, t.run_after,
           (SELECT max(d.generation_processed_at) FROM tasks d WHERE d.id = ANY (t.dependant_on)))))
FROM tasks t
WHERE t.status = 'Queued'
  AND t.run_after <= now()
  AND (CAST(:task_types AS text[]) IS NULL OR t.task_type = ANY (CAST(:task_types AS text[])))
  AND t.task_type <> ALL (CAST(:left_queued AS text[]))
  AND NOT EXISTS (
      SELECT 1
      FROM unnest(t.dependant_on) AS dependency (id)
      LEFT JOIN tasks d ON d.id = dependency.id
      WHERE d.status IS DISTINCT FROM 'Complete');
