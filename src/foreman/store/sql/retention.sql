-- Retention (store/retention.py): ended runs are deleted with their tasks, run data and counter
-- shards, a bounded number of rows per transaction. A run has ended when its status is terminal;
-- its age counts from completed_at, set when it first became terminal. These statements run as
-- the table owner (across organisations), never as foreman_app.

-- expired_runs --
-- The runs that ended before $1 (epoch ms), oldest first, at most $2 (run_ended_idx).
SELECT id
  FROM run
 WHERE status IN ('completed', 'failed', 'cancelled')
   AND completed_at < $1
 ORDER BY completed_at, id
 LIMIT $2

-- delete_run_data --
-- At most $2 run data rows of the runs $1; how many were deleted.
WITH gone AS (
    DELETE FROM run_data
     WHERE id IN (SELECT id FROM run_data WHERE run_id = ANY($1::uuid[]) LIMIT $2)
    RETURNING 1
)
SELECT count(*) FROM gone

-- delete_tasks --
-- At most $2 tasks of the runs $1 (their run data is gone already; a deleted parent's subtasks
-- go with it, by the foreign key's cascade); how many were deleted.
WITH gone AS (
    DELETE FROM task
     WHERE id IN (SELECT id FROM task WHERE run_id = ANY($1::uuid[]) LIMIT $2)
    RETURNING 1
)
SELECT count(*) FROM gone

-- lock_runs --
-- Lock the runs of $1 before deleting them. A task insert holds its run FOR KEY SHARE until it
-- commits (migration 0006: no foreign key, no cascade), so this waits for inserts in flight; the
-- next statement's snapshot then sees their tasks and keeps those runs for a later batch.
SELECT id FROM run WHERE id = ANY($1::uuid[]) FOR UPDATE

-- delete_runs --
-- The runs of $1 with no task and no run data left, if they still ended before $2 (a run set
-- back to running in the meantime stays); their 16 counter shards go by the cascade.
WITH gone AS (
    DELETE FROM run r
     WHERE r.id = ANY($1::uuid[])
       AND r.status IN ('completed', 'failed', 'cancelled')
       AND r.completed_at < $2
       AND NOT EXISTS (SELECT 1 FROM task t WHERE t.run_id = r.id)
       AND NOT EXISTS (SELECT 1 FROM run_data d WHERE d.run_id = r.id)
    RETURNING 1
)
SELECT count(*) FROM gone

-- count_expired --
-- What a prune of the runs that ended before $1 would delete (foreman prune --dry-run).
WITH expired AS (
    SELECT id
      FROM run
     WHERE status IN ('completed', 'failed', 'cancelled')
       AND completed_at < $1
)
SELECT (SELECT count(*) FROM expired) AS runs,
       (SELECT count(*) FROM task WHERE run_id IN (SELECT id FROM expired)) AS tasks,
       (SELECT count(*) FROM run_data WHERE run_id IN (SELECT id FROM expired)) AS run_data
