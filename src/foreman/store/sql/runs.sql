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
-- Auto-complete runs that statements ending tasks left open (their snapshots could not see tasks
-- that other statements ended at the same time): complete_runs() of migration 0021, with this
-- statement's fresh snapshot. $1 org (NULL: any, for the sweeper), $2 run ids, $3 now.
SELECT id
  FROM complete_runs(ARRAY(SELECT id
                             FROM run
                            WHERE ($1::text IS NULL OR org_id = $1) AND id = ANY($2::uuid[])),
                     $3) id

-- complete_due_runs --
-- The sweeper's catch-all, across organisations (its connection owns the tables): complete_runs()
-- for the oldest open auto-complete runs. $1 now, $2 limit.
SELECT id
  FROM complete_runs(ARRAY(SELECT id
                             FROM run
                            WHERE auto_complete AND completed_at IS NULL
                            ORDER BY created_at, id
                            LIMIT $2), $1) id
