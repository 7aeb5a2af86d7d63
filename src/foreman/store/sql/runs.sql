-- Runs (store/runs.py). Each statement is whole: store/queries.py loads it by the name in its
-- `-- name --` line; the comment lines right below that line describe it.
-- Columns are named as the fields of models.Run; a run's task counters are the sums over its
-- shards in run_counter, by run_task_counts() (migration 0009).

-- insert_run --
-- A pending run: no tasks yet. $1 id, $2 org, $3 input, $4 metadata, $5 now, $6 auto-complete.
INSERT INTO run (id, org_id, input_data, metadata, created_at, updated_at, auto_complete)
VALUES ($1, $2, $3, $4, $5, $5, $6)
RETURNING id, org_id, status, input_data, metadata, 0 AS total_tasks, 0 AS completed_tasks,
          0 AS failed_tasks, 0 AS cancelled_tasks, created_at, updated_at, output_data,
          error_data, started_at, completed_at, duration_ms, auto_complete

-- get_run --
-- $1 org, $2 run id.
SELECT r.*, c.*
  FROM run r
 CROSS JOIN LATERAL run_task_counts(r.id) c
 WHERE r.org_id = $1 AND r.id = $2

-- complete_runs --
-- Auto-complete runs that a statement ending tasks left open (its snapshot could not see tasks
-- that other statements ended at the same time): completed now if every task is terminal, read
-- with this statement's fresh snapshot; task_epoch and completed_at as in store/sql/queue.sql.
-- $1 org, $2 run ids, $3 now.
WITH k AS (
    SELECT r.id, r.task_epoch, x.*
      FROM run r
     CROSS JOIN LATERAL run_task_counts(r.id) x
     WHERE r.org_id = $1 AND r.id = ANY($2::uuid[]) AND r.auto_complete AND r.completed_at IS NULL
)
UPDATE run r
   SET status = CASE WHEN k.failed_tasks > 0 THEN 'failed' ELSE 'completed' END,
       completed_at = $3, duration_ms = $3 - coalesce(r.started_at, r.created_at), updated_at = $3
  FROM k
 WHERE r.id = k.id AND r.task_epoch = k.task_epoch AND r.completed_at IS NULL
   AND k.total_tasks > 0
   AND k.total_tasks = k.completed_tasks + k.failed_tasks + k.cancelled_tasks
RETURNING r.id

-- complete_due_runs --
-- The sweeper's catch-all, across organisations (its connection owns the tables): complete_runs
-- for the oldest open auto-complete runs. $1 now, $2 limit.
WITH k AS (
    SELECT r.id, r.task_epoch, x.*
      FROM (SELECT id, task_epoch
              FROM run
             WHERE auto_complete AND completed_at IS NULL
             ORDER BY created_at, id
             LIMIT $2) r
     CROSS JOIN LATERAL run_task_counts(r.id) x
)
UPDATE run r
   SET status = CASE WHEN k.failed_tasks > 0 THEN 'failed' ELSE 'completed' END,
       completed_at = $1, duration_ms = $1 - coalesce(r.started_at, r.created_at), updated_at = $1
  FROM k
 WHERE r.id = k.id AND r.task_epoch = k.task_epoch AND r.completed_at IS NULL
   AND k.total_tasks > 0
   AND k.total_tasks = k.completed_tasks + k.failed_tasks + k.cancelled_tasks
RETURNING r.id
