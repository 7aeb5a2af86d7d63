-- Live run events (store/events.py, GET /api/v1/runs/:id/events). Each statement is whole:
-- store/queries.py loads it by the name in its `-- name --` line.
--
-- Derived, never written: the events of a run are read from what its statements already store
-- (the run row, the task rows, the attempt history of migration 0012), so claims and finishes
-- write nothing for them. An event's key is (at, rank, subject, n): its time, the rank of its kind
-- (a task is created before it is queued, queued before started, started before it ends; a run
-- starts with its first claim and ends after its last task), the run or task id, and the attempt.
-- Every event of a task carries a time at or before the task's updated_at, so the tasks to look
-- at after a cursor are those with updated_at at or after the cursor's time (and created by the
-- bound's). The cost is that of those tasks and their attempts: a whole run's history from its
-- start (a new watcher) reads every task of it, a live tick only the tasks changed since the last
-- event, both through the run's index of task_run_created_idx (no index on updated_at: it would
-- cost every claim and finish).

-- run_events --
-- The events after the cursor (exclusive) up to the bound (inclusive), oldest first. One row at
-- least: found (the run exists for this organisation) and ended (the run has ended, every task of
-- it has too, and nothing changed after the bound's time: no event can follow). $1 org, $2 run,
-- $3..$6 the cursor (at, rank, subject, n), $7..$10 the bound, $11 limit.
WITH r AS (
    SELECT id, status, created_at, started_at, completed_at, updated_at
      FROM run
     WHERE org_id = $1 AND id = $2
), t AS (
    -- Each task with what its attempts and parents say, looked up per task through their
    -- indexes (LATERAL): no join between CTEs, whose row estimates a busy table may get wrong.
    SELECT t.id, t.type, t.status, t.created_at, t.queued_at, t.completed_at, t.updated_at,
           t.retry_count, t.on_parent_failure IS NOT NULL AS has_parents, f.first_start,
           f.last_outcome, p.parents_done
      FROM task t
     CROSS JOIN LATERAL (
          SELECT min(a.started_at) AS first_start,
                 (array_agg(a.outcome ORDER BY a.started_at DESC, a.attempt DESC))[1]
                     AS last_outcome
            FROM task_attempt a
           WHERE a.org_id = $1 AND a.task_id = t.id
     ) f
     -- When a task created blocked was released: its last parent's end (the statement that ended
     -- it released the child), no later than its first attempt.
      LEFT JOIN LATERAL (
          SELECT max(q.completed_at) AS parents_done
            FROM task_dependency d
            JOIN task q ON q.org_id = $1 AND q.id = d.parent_id
           WHERE d.org_id = $1 AND d.child_id = t.id
      ) p ON t.on_parent_failure IS NOT NULL AND t.status <> 'blocked'
     WHERE t.org_id = $1 AND t.run_id = $2 AND t.updated_at >= $3 AND t.created_at <= $7
), a AS (
    SELECT a.task_id, a.attempt, a.worker_id, a.started_at, a.ended_at, a.outcome, a.last,
           t.type, t.status AS task_status
      FROM t
     CROSS JOIN LATERAL (
          SELECT a.*,
                 row_number() OVER (ORDER BY a.started_at DESC, a.attempt DESC) = 1 AS last
            FROM task_attempt a
           WHERE a.org_id = $1 AND a.task_id = t.id
     ) a
), e AS (
    SELECT r.created_at AS at, 0 AS rank, r.id AS subject, 0 AS n, 'run.created' AS kind,
           'pending' AS status, NULL::uuid AS task_id, NULL::text AS task_type,
           NULL::int AS attempt, NULL::text AS worker_id
      FROM r
    UNION ALL
    SELECT r.started_at, 4, r.id, 0, 'run.started', 'running', NULL, NULL, NULL, NULL
      FROM r
     WHERE r.started_at IS NOT NULL
    UNION ALL
    SELECT r.completed_at, 7, r.id, 0, 'run.' || r.status, r.status, NULL, NULL, NULL, NULL
      FROM r
     WHERE r.completed_at IS NOT NULL AND r.status IN ('completed', 'failed', 'cancelled')
    UNION ALL
    -- Created: blocked (with dependencies), queued (enqueued at creation, or queued again later
    -- by a retry, which moves queued_at), else pending.
    SELECT t.created_at, 1, t.id, 0, 'task.created',
           CASE WHEN t.has_parents THEN 'blocked'
                WHEN t.queued_at = t.created_at OR t.first_start < t.queued_at
                     OR t.retry_count > 0 THEN 'queued'
                ELSE 'pending' END,
           t.id, t.type, NULL, NULL
      FROM t
    UNION ALL
    -- Queued after its creation: a pending task enqueued (or claimed by id), or the last retry.
    SELECT t.queued_at, 2, t.id, 0, 'task.queued', 'queued', t.id, t.type, NULL, NULL
      FROM t
     WHERE t.queued_at > t.created_at
    UNION ALL
    -- Blocked -> queued: released when its last parent ended (now, if it has not run since).
    SELECT CASE WHEN t.first_start IS NULL THEN t.updated_at
                ELSE least(greatest(coalesce(t.parents_done, t.created_at), t.created_at),
                           t.first_start) END,
           2, t.id, 1, 'task.queued', 'queued', t.id, t.type, NULL, NULL
      FROM t
     WHERE t.has_parents AND t.status <> 'blocked' AND t.queued_at IS NOT NULL
       AND (t.first_start IS NOT NULL OR t.status = 'queued')
    UNION ALL
    SELECT a.started_at, 3, a.task_id, a.attempt, 'task.started', 'running', a.task_id, a.type,
           a.attempt, a.worker_id
      FROM a
    UNION ALL
    -- The end of an attempt. A failed one is 'retrying' unless it is the task's last and the task
    -- then ended failed (or was retried by hand from failed); a released one went back to queued.
    SELECT a.ended_at,
           CASE WHEN a.outcome = 'released' THEN 2
                WHEN a.outcome IN ('failed', 'lease_expired')
                     AND NOT (a.last AND a.task_status NOT IN ('retrying', 'cancelled')) THEN 5
                ELSE 6 END,
           a.task_id, a.attempt,
           CASE WHEN a.outcome = 'released' THEN 'task.queued'
                WHEN a.outcome IN ('failed', 'lease_expired')
                     AND NOT (a.last AND a.task_status NOT IN ('retrying', 'cancelled'))
                THEN 'task.retrying'
                WHEN a.outcome = 'lease_expired' THEN 'task.failed'
                ELSE 'task.' || a.outcome END,
           CASE WHEN a.outcome = 'released' THEN 'queued'
                WHEN a.outcome IN ('failed', 'lease_expired')
                     AND NOT (a.last AND a.task_status NOT IN ('retrying', 'cancelled'))
                THEN 'retrying'
                WHEN a.outcome = 'lease_expired' THEN 'failed'
                ELSE a.outcome END,
           a.task_id, a.type, a.attempt, a.worker_id
      FROM a
     WHERE a.ended_at IS NOT NULL AND a.outcome <> 'running'
    UNION ALL
    -- A task that ended without its last attempt ending it: cancelled while it waited, or ended
    -- by the legacy PATCH without an attempt.
    SELECT t.completed_at, 6, t.id, 0, 'task.' || t.status, t.status, t.id, t.type, NULL, NULL
      FROM t
     WHERE t.completed_at IS NOT NULL AND t.status IN ('completed', 'failed', 'cancelled')
       AND NOT coalesce(t.last_outcome = t.status
                        OR (t.status = 'failed' AND t.last_outcome = 'lease_expired'), false)
)
SELECT s.found, s.ended, e.at, e.rank, e.subject, e.n, e.kind, e.status, e.task_id, e.task_type,
       e.attempt, e.worker_id
  FROM (SELECT EXISTS (SELECT 1 FROM r) AS found,
               EXISTS (SELECT 1
                         FROM r
                        CROSS JOIN LATERAL run_task_counts(r.id) c
                        WHERE r.status IN ('completed', 'failed', 'cancelled')
                          AND c.total_tasks = c.completed_tasks + c.failed_tasks
                                              + c.cancelled_tasks
                          AND r.updated_at <= $7
                          AND coalesce((SELECT max(updated_at) FROM t), 0) <= $7) AS ended) s
  LEFT JOIN LATERAL (
      SELECT *
        FROM e
       WHERE e.at IS NOT NULL
         AND (e.at, e.rank, e.subject, e.n) > ($3::bigint, $4::int, $5::uuid, $6::int)
         AND (e.at, e.rank, e.subject, e.n) <= ($7::bigint, $8::int, $9::uuid, $10::int)
       ORDER BY e.at, e.rank, e.subject, e.n
       LIMIT $11
  ) e ON true
