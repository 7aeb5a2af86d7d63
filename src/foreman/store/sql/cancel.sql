-- Cancellation (store/cancel.py, issue 13): POST /tasks/:id/cancel and POST /runs/:id/cancel. Each
-- statement is whole: store/queries.py loads it by the name in its `-- name --` line.
--
-- Pending, queued, retrying (and blocked) tasks end 'cancelled' at once, counted on one shard of
-- their run's counters in the same statement. A running task cannot be stopped from here: it is
-- marked (cancel_requested_at, migration 0013); its worker's next heartbeat answers
-- `cancelled: true`, and it ends 'cancelled' when the worker reports or its lease ends
-- (store/sql/queue.sql). The UPDATE's WHERE is re-checked on the row after a concurrent change
-- (READ COMMITTED), so a task that a worker completes at the same moment is ended exactly once:
-- by whichever statement locks it first. The cancelled tasks' blocked children are cancelled or
-- released in the same statement, by end_dependents() (migration 0021), as in queue.sql.

-- cancel_task --
-- $1 org, $2 task id, $3 now, $4 counter shard, $5 the dependency step's counter shard.
WITH t AS (
    UPDATE task
       SET status = CASE WHEN status = 'running' THEN status ELSE 'cancelled' END,
           cancel_requested_at = CASE WHEN status = 'running' THEN $3::bigint END,
           completed_at = CASE WHEN status = 'running' THEN completed_at ELSE $3::bigint END,
           duration_ms = CASE WHEN status = 'running' THEN duration_ms
                              ELSE $3::bigint - coalesce(started_at, created_at) END,
           updated_at = $3
     WHERE org_id = $1 AND id = $2
       AND (status IN ('pending', 'queued', 'retrying', 'blocked')
            OR (status = 'running' AND cancel_requested_at IS NULL))
    RETURNING *
), c AS (
    INSERT INTO run_counter (run_id, shard, org_id, cancelled_tasks)
    SELECT run_id, $4::smallint, org_id, 1 FROM t WHERE status = 'cancelled'
    ON CONFLICT (run_id, shard) DO UPDATE
       SET cancelled_tasks = run_counter.cancelled_tasks + EXCLUDED.cancelled_tasks
), dep AS (
    SELECT x.*
      FROM (SELECT id
              FROM t
             WHERE status = 'cancelled'
               AND (child_epoch > 0
                    OR EXISTS (SELECT 1 FROM task_dependency d WHERE d.parent_id = t.id))) p,
           end_dependents(ARRAY[p.id], $3, $5::smallint) x
)
SELECT CASE WHEN t.status = 'cancelled' THEN pg_notify('foreman_task_done', t.id::text) END
           AS notified,
       dep.released AS released_ids, dep.recheck AS recheck_children,
       (SELECT array_agg(r.id)
          FROM run r
         WHERE r.id IN (SELECT t.run_id WHERE t.status = 'cancelled')
           AND r.auto_complete AND r.completed_at IS NULL) AS runs_ended,
       dep.cancelled_runs AS runs_cancelled,
       t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id
  FROM t
  LEFT JOIN dep ON true

-- cancel_run --
-- The run becomes 'cancelled' (a repeat keeps its first completion time) and so do its tasks, as
-- cancel_task does each (their dependents are tasks of the run: cancelled here too, the step only
-- marks the edges); a run that ended 'completed' or 'failed' is left as it is (no row).
-- $1 org, $2 run id, $3 now, $4 counter shard, $5 the dependency step's counter shard.
WITH r AS (
    UPDATE run
       SET status = 'cancelled',
           completed_at = coalesce(completed_at, $3::bigint),
           duration_ms = coalesce(duration_ms, $3::bigint - coalesce(started_at, created_at)),
           updated_at = $3
     WHERE org_id = $1 AND id = $2 AND status NOT IN ('completed', 'failed')
    RETURNING id
), t AS (
    UPDATE task
       SET status = CASE WHEN status = 'running' THEN status ELSE 'cancelled' END,
           cancel_requested_at = CASE WHEN status = 'running' THEN $3::bigint END,
           completed_at = CASE WHEN status = 'running' THEN completed_at ELSE $3::bigint END,
           duration_ms = CASE WHEN status = 'running' THEN duration_ms
                              ELSE $3::bigint - coalesce(started_at, created_at) END,
           updated_at = $3
     WHERE org_id = $1 AND run_id IN (SELECT id FROM r)
       AND (status IN ('pending', 'queued', 'retrying', 'blocked')
            OR (status = 'running' AND cancel_requested_at IS NULL))
    RETURNING id, run_id, org_id, status, type
), c AS (
    INSERT INTO run_counter (run_id, shard, org_id, cancelled_tasks)
    SELECT run_id, $4::smallint, org_id, count(*) FROM t WHERE status = 'cancelled'
     GROUP BY run_id, org_id
    ON CONFLICT (run_id, shard) DO UPDATE
       SET cancelled_tasks = run_counter.cancelled_tasks + EXCLUDED.cancelled_tasks
), dep AS (
    SELECT x.*
      FROM (SELECT array_agg(id) AS ids FROM t WHERE status = 'cancelled' HAVING count(*) > 0) p,
           end_dependents(p.ids, $3, $5::smallint) x
)
SELECT EXISTS (SELECT 1 FROM r) AS cancelled,
       (SELECT array_agg(type) FROM t WHERE status = 'cancelled') AS types_ended,
       (SELECT count(*) FROM dep) AS dependency_step,
       (SELECT count(pg_notify('foreman_task_done', g.ids))
          FROM (SELECT string_agg(d.id::text, ',') AS ids
                  FROM (SELECT id, (row_number() OVER () - 1) / 100 AS n
                          FROM t
                         WHERE status = 'cancelled') d
                 GROUP BY d.n) g) AS notified
