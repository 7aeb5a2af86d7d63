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
-- backoff or ready again), running, blocked (waiting for parents); each status read from at most $3 rows of the organisation's
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
), blocked AS (
    SELECT type, count(*) AS tasks
      FROM (SELECT type FROM task WHERE org_id = $1 AND status = 'blocked' LIMIT $3) r
     GROUP BY type
)
SELECT type, coalesce(a.tasks, 0) AS ready, coalesce(b.tasks, 0) AS retrying,
       coalesce(c.tasks, 0) AS running, coalesce(d.tasks, 0) AS blocked, a.oldest_ready_at
  FROM ready a
  FULL JOIN retrying b USING (type)
  FULL JOIN running c USING (type)
  FULL JOIN blocked d USING (type)
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

-- task_parents --
-- A page of a task's parents (dependsOn) with their status, in edge order (by parent id, UUIDv7:
-- creation order; task_dependency_child_idx). $1 org, $2 child id, $3 limit, $4 offset.
SELECT t.id, t.type, t.status, t.completed_at, NOT e.parent_done AS open
  FROM task_dependency e
  JOIN task t ON t.id = e.parent_id AND t.org_id = $1
 WHERE e.org_id = $1 AND e.child_id = $2
 ORDER BY e.parent_id
 LIMIT $3 OFFSET $4

-- task_parents_count --
-- How many parents a task has, and how many of them have not ended, from at most $3 edges.
-- $1 org, $2 child id, $3 bound.
SELECT count(*) AS parents, count(*) FILTER (WHERE NOT parent_done) AS open
  FROM (SELECT parent_done FROM task_dependency
         WHERE org_id = $1 AND child_id = $2 LIMIT $3) e

-- task_attempts --
-- A page of a task's attempts, oldest first (task_attempt_task_idx). $1 org, $2 task id,
-- $3 limit, $4 offset.
SELECT a.attempt, a.worker_id, a.started_at, a.ended_at, a.duration_ms, a.outcome, a.error_data
  FROM task_attempt a
 WHERE a.org_id = $1 AND a.task_id = $2
 ORDER BY a.started_at, a.attempt
 LIMIT $3 OFFSET $4

-- task_attempts_count --
-- How many attempts a task has, up to $3. $1 org, $2 task id, $3 bound.
SELECT count(*) FROM (SELECT 1 FROM task_attempt WHERE org_id = $1 AND task_id = $2 LIMIT $3) a

-- task_cancel_requested --
-- When a cancel was asked of a running task (migration 0013), NULL if none. $1 org, $2 task id.
SELECT cancel_requested_at FROM task WHERE org_id = $1 AND id = $2

-- run_blocked_count --
-- A run's blocked tasks, from at most $3 rows (task_run_status_idx). $1 org, $2 run id, $3 bound.
SELECT count(*)
  FROM (SELECT 1 FROM task WHERE org_id = $1 AND run_id = $2 AND status = 'blocked' LIMIT $3) b
