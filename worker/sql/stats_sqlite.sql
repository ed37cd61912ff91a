-- Fleet statistics for `wan-worker stats` and the metrics endpoint, SQLite dialect. Loaded by
-- worker/stats.py; each query starts at a `-- name: <query> --` header and a one-line description.
-- Every aggregate is computed here, so the numbers cover every worker that writes to this table.
-- A row's model is the one its result names (what actually ran), else the one its params ask for,
-- as text whatever JSON type a backend wrote it in (json_extract would return a number as a number).
-- :since_seconds (a look-back from the database clock) and :since_time (an absolute UTC time as
-- 'YYYY-MM-DD HH:MM:SS.SSS') are optional; NULL means no bound.

-- name: task_counts --
-- Rows per model, preset and task type, by outcome.
SELECT coalesce(CAST(json_extract(result_data, '$.model') AS TEXT), CAST(json_extract(params, '$.model') AS TEXT), '-') AS model,
       coalesce(CAST(json_extract(result_data, '$.preset') AS TEXT), CAST(json_extract(params, '$.preset') AS TEXT), '-') AS preset,
       task_type,
       count(*) AS tasks,
       sum(status = 'Complete') AS complete,
       sum(status = 'Failed') AS failed,
       sum(status = 'Cancelled') AS cancelled,
       sum(status IN ('Queued', 'In Progress')) AS pending
FROM tasks
WHERE (:since_seconds IS NULL
       OR created_at >= strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || :since_seconds || ' seconds'))
  AND (:since_time IS NULL OR created_at >= :since_time)
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;

-- name: phase_percentiles --
-- p50 and p90 of every phase in result_data.phase_seconds of Complete rows, per model, preset, task
-- type and phase, with Postgres' percentile_cont semantics: the value at rank p * (n - 1) of the
-- sorted samples, interpolated linearly between the two nearest ranks. A sample at rank r weighs
-- max(0, 1 - |r - p * (n - 1)|): 1 at an exact rank, the two neighbours share the weight otherwise.
WITH phases AS (
    SELECT coalesce(CAST(json_extract(t.result_data, '$.model') AS TEXT), CAST(json_extract(t.params, '$.model') AS TEXT), '-') AS model,
           coalesce(CAST(json_extract(t.result_data, '$.preset') AS TEXT), CAST(json_extract(t.params, '$.preset') AS TEXT), '-') AS preset,
           t.task_type,
           phase.key AS phase,
           CAST(phase.value AS REAL) AS seconds
    FROM tasks t, json_each(t.result_data, '$.phase_seconds') AS phase
    WHERE t.status = 'Complete'
      AND json_type(t.result_data, '$.phase_seconds') = 'object'
      AND phase.type IN ('integer', 'real')
      AND (:since_seconds IS NULL
           OR t.created_at >= strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || :since_seconds || ' seconds'))
      AND (:since_time IS NULL OR t.created_at >= :since_time)
),
ranked AS (
    SELECT *,
           row_number() OVER sorted - 1 AS rank,
           count(*) OVER (PARTITION BY model, preset, task_type, phase) AS samples
    FROM phases
    WINDOW sorted AS (PARTITION BY model, preset, task_type, phase ORDER BY seconds)
)
SELECT model, preset, task_type, phase,
       max(samples) AS samples,
       sum(seconds * max(0.0, 1.0 - abs(rank - 0.5 * (samples - 1)))) AS p50_seconds,
       sum(seconds * max(0.0, 1.0 - abs(rank - 0.9 * (samples - 1)))) AS p90_seconds
FROM ranked
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4;

-- name: oldest_ready_task_age --
-- Seconds the longest-waiting claimable row has been claimable: Queued, run_after reached, every
-- dependency Complete; it became claimable at the latest of its creation, its run_after and its
-- last dependency's completion; of the types a worker takes (as the claim: a list or NULL for any,
-- less those it leaves queued for other workers). NULL when nothing is claimable.
SELECT (julianday('now') - julianday(min(max(
           t.created_at, t.run_after,
           coalesce((SELECT max(d.generation_processed_at)
                     FROM json_each(t.dependant_on) AS dependency
                     JOIN tasks d ON d.id = dependency.value), t.created_at))))) * 86400.0
FROM tasks t
WHERE t.status = 'Queued'
  AND t.run_after <= strftime('%Y-%m-%d %H:%M:%f', 'now')
  AND (:task_types IS NULL OR t.task_type IN (SELECT value FROM json_each(:task_types)))
  AND t.task_type NOT IN (SELECT value FROM json_each(:left_queued))
  AND NOT EXISTS (
      SELECT 1
      FROM json_each(t.dependant_on) AS dependency
      LEFT JOIN tasks d ON d.id = dependency.value
      WHERE d.status IS NOT 'Complete');
