-- The dashboard's fixed reads (store/ui.py). Each reads a bounded number of rows of an index.

-- task_children --
-- A task's children, oldest first (task_parent_idx). $1 org, $2 parent id, $3 limit.
SELECT t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id
  FROM task t
 WHERE t.org_id = $1 AND t.parent_task_id = $2
 ORDER BY t.created_at, t.id
 LIMIT $3

-- task_run_data --
-- Run data a task wrote, newest first (run_data_task_idx). $1 org, $2 task id, $3 limit.
SELECT d.id, d.run_id, d.task_id, d.org_id, d.key, d.value, d.tags, d.metadata, d.created_at,
       d.updated_at
  FROM run_data d
 WHERE d.org_id = $1 AND d.task_id = $2
 ORDER BY d.created_at DESC, d.id DESC
 LIMIT $3

-- queue_overview --
-- Per type: ready now (queued or retrying whose run_after has come), retrying (waiting out a
-- backoff or ready again), running; each status read from at most $3 rows of the organisation's
-- status index, so a count at the bound means "at least". The oldest ready time is the later of
-- being queued and run_after. $1 org, $2 now, $3 bound.
WITH ready AS (
    SELECT type, count(*) AS tasks, min(ready_at) AS oldest_ready_at
      FROM (SELECT type, greatest(coalesce(queued_at, created_at), run_after) AS ready_at
              FROM task
             WHERE org_id = $1 AND status IN ('queued', 'retrying') AND run_after <= $2
             LIMIT $3) r
     GROUP BY type
), retrying AS (
    SELECT type, count(*) AS tasks
      FROM (SELECT type FROM task WHERE org_id = $1 AND status = 'retrying' LIMIT $3) r
     GROUP BY type
), running AS (
    SELECT type, count(*) AS tasks
      FROM (SELECT type FROM task WHERE org_id = $1 AND status = 'running' LIMIT $3) r
     GROUP BY type
)
SELECT type, coalesce(a.tasks, 0) AS ready, coalesce(b.tasks, 0) AS retrying,
       coalesce(c.tasks, 0) AS running, a.oldest_ready_at
  FROM ready a
  FULL JOIN retrying b USING (type)
  FULL JOIN running c USING (type)
 ORDER BY type

-- lease_holders --
-- Workers holding leases now, from at most $2 running tasks: how many each holds, the earliest
-- start among them, and the latest lease expiry (renewed by each heartbeat). $1 org, $2 bound.
SELECT coalesce(worker_id, '(unnamed)') AS worker_id, count(*) AS tasks,
       min(started_at) AS oldest_start, max(lease_expires_at) AS latest_expiry,
       array_agg(DISTINCT type ORDER BY type) AS types
  FROM (SELECT worker_id, started_at, lease_expires_at, type
          FROM task
         WHERE org_id = $1 AND status = 'running'
         LIMIT $2) r
 GROUP BY 1
 ORDER BY 2 DESC, 1
