-- Leases on tasks (store/queue.py): claim, heartbeat, complete/fail, release, and the sweeper's
-- statements. Each statement is whole: store/queries.py loads it by the name in its `-- name --`
-- line; the comment lines right below that line describe it and are not sent.
--
-- Shared rules, written out in each statement that needs them:
-- * Claims and heartbeats commit without waiting for the WAL flush: `set_config(
--   'synchronous_commit', 'off', true)` for their own transaction only, inside the statement (no
--   extra round trip). One lost in a PostgreSQL crash only puts its task back as it was, which
--   at-least-once delivery covers (the worker's result is then refused by its lease), and any
--   later durable commit flushes it anyway. It takes the fsync wait (~0.3 ms) off the pickup path.
-- * Backoff of a failed attempt: least(2000 * 2^(attempt-1), 300000) ms, +-20 % jitter
--   (docs/queue-protocol.md), so that many tasks failing together do not come back together.
-- * A task's first move into a terminal status counts it on one random shard ($n::smallint) of its
--   run's counters in the same statement, summed per run: one statement may end many tasks of one
--   run, and an INSERT ... ON CONFLICT cannot touch the same (run, shard) row twice.
-- * Every attempt is kept (task_attempt, migration 0012): a claim inserts the attempt's row and
--   the statement that ends the attempt closes the task's one 'running' row with its outcome,
--   both set-based from the statement's changed rows (no extra round trip, no per-row trigger).
-- * Auto-complete runs (migration 0014): a claim makes a 'pending' one 'running'; a statement that
--   ends tasks completes each such run whose counters, as this statement's snapshot has them plus
--   its own changes, leave no task open: 'failed' if any task failed, else 'completed'. The
--   UPDATE compares task_epoch with the value read (a task added meanwhile bumped it: no
--   completion) and re-checks completed_at after the row lock (exactly once). Two statements
--   ending a run's last tasks concurrently do not see each other: each answers the runs it left
--   open (`runs_open`, with few tasks open) and its caller completes them with a fresh snapshot
--   (runs.sql complete_runs); the sweeper catches any left.
-- * Dependencies (migration 0015, store/sql/dependencies.sql explains the step): finish_tasks
--   releases or cancels the blocked children of the tasks it ends in the same statement (`dd`,
--   `cf`, `cz`, `ch`); it answers `recheck_ids`, ended tasks whose child_epoch moved while the
--   statement waited for their row (a child added meanwhile: its edges are not in this snapshot),
--   `cascade_ids`, children it cancelled, for end_dependents, and `recheck_children`, children it
--   left with few open edges, for release_children.
-- * Ended tasks wake `wait` long-polls: NOTIFY foreman_task_done, one notification per 100 ended
--   tasks (a payload holds at most 8000 bytes). As an uncorrelated subquery in the select list it
--   runs once, when the statement returns a row.
-- * `s`, the rows as they were before the statement, explains a refusal. `id = ANY(array)` makes
--   PostgreSQL look each id up in the primary key; a join against the unnest() rows may instead
--   scan every task of the organisation.
-- * The task columns come last, named as the fields of models.Task; the lease token is only shown
--   to its claimer, and run_after only when it lies after created_at.

-- claim_tasks --
-- Ready tasks in claim order (BullMQ order: priority 0 first, then 1 = highest), locked without
-- waiting for rows another claimer holds. The CTE is MATERIALIZED so LIMIT applies exactly once.
-- $1 org, $2 now, $3 types (NULL: any), $4 limit, $5 lease ms, $6 worker id.
WITH c AS MATERIALIZED (
    SELECT id
      FROM task
     WHERE org_id = $1
       AND status IN ('queued', 'retrying')
       AND run_after <= $2
       AND ($3::text[] IS NULL OR type = ANY($3::text[]))
     ORDER BY priority, run_after, id
     LIMIT $4
       FOR UPDATE SKIP LOCKED
), t AS (
    UPDATE task
       SET status = 'running',
           attempt = attempt + 1,
           started_at = coalesce(started_at, $2),
           lease_token = gen_random_uuid(),
           lease_expires_at = $2 + $5::bigint,
           worker_id = $6,
           updated_at = $2
     WHERE org_id = $1 AND id IN (SELECT id FROM c)
    RETURNING *
), n AS (
    INSERT INTO task_attempt (task_id, attempt, org_id, run_id, worker_id, started_at)
    SELECT id, attempt, org_id, run_id, worker_id, $2 FROM t
), g AS (
    UPDATE run
       SET status = 'running', started_at = coalesce(started_at, $2), updated_at = $2
     WHERE org_id = $1 AND id IN (SELECT run_id FROM t) AND auto_complete AND status = 'pending'
)
SELECT t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id, t.lease_token, t.traceparent
  FROM t, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
 ORDER BY t.priority, t.run_after, t.id

-- claim_task --
-- By id (a BullMQ job named it): any not-yet-terminal task that nobody holds. A running task whose
-- lease expired is taken over like the sweeper would: the lost attempt counts as a retry, and only
-- while attempts remain (the sweeper fails it otherwise). Keep its SET and WHERE the same as
-- claim_task_ids'. $1 org, $2 task id, $3 now, $4 lease ms, $5 worker id.
WITH t AS (
    UPDATE task
       SET status = 'running',
           attempt = attempt + 1,
           retry_count = retry_count + (status = 'running')::int,
           error_data = CASE WHEN status = 'running'
                             THEN jsonb_build_object(
                                      'message',
                                      format('Lease expired on attempt %s; retrying', attempt),
                                      'type', 'LeaseExpired')
                             ELSE error_data END,
           queued_at = coalesce(queued_at, $3),
           started_at = coalesce(started_at, $3),
           lease_token = gen_random_uuid(),
           lease_expires_at = $3 + $4::bigint,
           worker_id = $5,
           updated_at = $3
     WHERE org_id = $1 AND id = $2
       AND (status IN ('pending', 'queued', 'retrying')
            OR (status = 'running' AND lease_expires_at < $3 AND attempt <= max_retries
                AND cancel_requested_at IS NULL))
    RETURNING *
), x AS (
    UPDATE task_attempt a
       SET outcome = 'lease_expired', ended_at = $3, duration_ms = $3 - a.started_at,
           error_data = t.error_data
      FROM t
     WHERE a.task_id = t.id AND a.org_id = $1 AND a.outcome = 'running'
), n AS (
    INSERT INTO task_attempt (task_id, attempt, org_id, run_id, worker_id, started_at)
    SELECT id, attempt, org_id, run_id, worker_id, $3 FROM t
), g AS (
    UPDATE run
       SET status = 'running', started_at = coalesce(started_at, $3), updated_at = $3
     WHERE org_id = $1 AND id IN (SELECT run_id FROM t) AND auto_complete AND status = 'pending'
)
SELECT t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id, t.lease_token, t.traceparent
  FROM t, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit

-- claim_task_ids --
-- Many ids at once (jobs a bullmq worker received together): claim_task's rules per id, one
-- statement; the ids are distinct (store/queue.py answers repeats). $1 org, $2 task ids, $3 now,
-- $4 lease ms, $5 worker id.
WITH i AS (
    SELECT * FROM unnest($2::uuid[]) WITH ORDINALITY AS i(task_id, ord)
), t AS (
    UPDATE task
       SET status = 'running',
           attempt = attempt + 1,
           retry_count = retry_count + (status = 'running')::int,
           error_data = CASE WHEN status = 'running'
                             THEN jsonb_build_object(
                                      'message',
                                      format('Lease expired on attempt %s; retrying', attempt),
                                      'type', 'LeaseExpired')
                             ELSE error_data END,
           queued_at = coalesce(queued_at, $3),
           started_at = coalesce(started_at, $3),
           lease_token = gen_random_uuid(),
           lease_expires_at = $3 + $4::bigint,
           worker_id = $5,
           updated_at = $3
     WHERE org_id = $1 AND id = ANY($2::uuid[])
       AND (status IN ('pending', 'queued', 'retrying')
            OR (status = 'running' AND lease_expires_at < $3 AND attempt <= max_retries
                AND cancel_requested_at IS NULL))
    RETURNING *
), x AS (
    UPDATE task_attempt a
       SET outcome = 'lease_expired', ended_at = $3, duration_ms = $3 - a.started_at,
           error_data = t.error_data
      FROM t
     WHERE a.task_id = t.id AND a.org_id = $1 AND a.outcome = 'running'
), n AS (
    INSERT INTO task_attempt (task_id, attempt, org_id, run_id, worker_id, started_at)
    SELECT id, attempt, org_id, run_id, worker_id, $3 FROM t
), g AS (
    UPDATE run
       SET status = 'running', started_at = coalesce(started_at, $3), updated_at = $3
     WHERE org_id = $1 AND id IN (SELECT run_id FROM t) AND auto_complete AND status = 'pending'
), s AS (
    SELECT id, status FROM task WHERE org_id = $1 AND id = ANY($2::uuid[])
)
SELECT i.task_id::text AS claimed_id, s.status AS status_before,
       t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id, t.lease_token, t.traceparent
  FROM i
  LEFT JOIN t ON t.id = i.task_id
  LEFT JOIN s ON s.id = i.task_id,
       (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
 ORDER BY i.ord

-- heartbeat --
-- Extend the leases still held under their tokens; `cancelled`: the task was cancelled, or a
-- cancel was asked while it runs (cancel_requested_at, migration 0013). $1 org, $2 task ids, $3 lease tokens, $4 now,
-- $5 lease ms.
WITH i AS (
    SELECT * FROM unnest($2::uuid[], $3::uuid[]) WITH ORDINALITY AS i(task_id, token, ord)
), h AS (
    UPDATE task
       SET lease_expires_at = $4::bigint + $5::bigint
      FROM i
     WHERE task.org_id = $1 AND task.id = ANY($2::uuid[]) AND task.id = i.task_id
       AND task.status = 'running' AND task.lease_token = i.token
    RETURNING task.id, task.lease_expires_at
), s AS (
    SELECT id, status, lease_token, cancel_requested_at
      FROM task
     WHERE org_id = $1 AND id = ANY($2::uuid[])
)
SELECT i.task_id, h.id IS NOT NULL AS ok,
       coalesce(s.status = 'cancelled' OR s.cancel_requested_at IS NOT NULL, false) AS cancelled,
       h.lease_expires_at, s.id IS NOT NULL AS found
  FROM i
  LEFT JOIN h ON h.id = i.task_id
  LEFT JOIN s ON s.id = i.task_id
 ORDER BY i.ord

-- finish_tasks --
-- complete and fail, single or batch. The next status is 'cancelled' when a cancel was asked while
-- the attempt ran (cancel_requested_at, migration 0013; the result is not kept), else
-- 'completed', or 'retrying' while the failure is retryable and attempts remain (maxRetries 0 =
-- one attempt: attempt 1 <= 0 is false), else 'failed'; its CASE is written out where each column needs it. The lease token stays on the
-- row, so a repeat of the same call is recognised (and changes nothing) while a newer attempt's
-- claim replaces it. $1 org, $2 task ids, $3 lease tokens, $4 outcomes, $5 output data,
-- $6 error data, $7 retryable, $8 now, $9 counter shard.
WITH i AS (
    SELECT *
      FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::jsonb[], $6::jsonb[], $7::bool[])
           WITH ORDINALITY AS i(task_id, token, outcome, output_data, error_data, retryable, ord)
), t AS (
    UPDATE task
       SET status = CASE WHEN task.cancel_requested_at IS NOT NULL THEN 'cancelled'
                         WHEN i.outcome = 'completed' THEN 'completed'
                         WHEN i.retryable AND task.attempt <= task.max_retries THEN 'retrying'
                         ELSE 'failed' END,
           output_data = CASE WHEN i.outcome = 'completed' AND task.cancel_requested_at IS NULL
                              THEN i.output_data ELSE task.output_data END,
           error_data = CASE WHEN i.outcome = 'failed' AND task.cancel_requested_at IS NULL
                             THEN i.error_data ELSE task.error_data END,
           retry_count = task.retry_count
                         + (CASE WHEN task.cancel_requested_at IS NOT NULL THEN 'cancelled'
                                 WHEN i.outcome = 'completed' THEN 'completed'
                                 WHEN i.retryable AND task.attempt <= task.max_retries
                                 THEN 'retrying'
                                 ELSE 'failed' END = 'retrying')::int,
           run_after = CASE WHEN CASE WHEN task.cancel_requested_at IS NOT NULL THEN 'cancelled'
                                      WHEN i.outcome = 'completed' THEN 'completed'
                                      WHEN i.retryable AND task.attempt <= task.max_retries
                                      THEN 'retrying'
                                      ELSE 'failed' END = 'retrying'
                            THEN $8::bigint
                                 + (least(2000 * power(2, greatest(task.attempt, 1) - 1), 300000)
                                    * (0.8 + random() * 0.4))::bigint
                            ELSE task.run_after END,
           completed_at = CASE WHEN CASE WHEN task.cancel_requested_at IS NOT NULL THEN 'cancelled'
                                         WHEN i.outcome = 'completed' THEN 'completed'
                                         WHEN i.retryable AND task.attempt <= task.max_retries
                                         THEN 'retrying'
                                         ELSE 'failed' END = 'retrying'
                               THEN NULL ELSE $8::bigint END,
           duration_ms = CASE WHEN CASE WHEN task.cancel_requested_at IS NOT NULL THEN 'cancelled'
                                        WHEN i.outcome = 'completed' THEN 'completed'
                                        WHEN i.retryable AND task.attempt <= task.max_retries
                                        THEN 'retrying'
                                        ELSE 'failed' END = 'retrying'
                              THEN NULL
                              ELSE $8::bigint - coalesce(task.started_at, task.created_at) END,
           lease_expires_at = NULL,
           updated_at = $8
      FROM i
     WHERE task.org_id = $1 AND task.id = ANY($2::uuid[]) AND task.id = i.task_id
       AND task.status = 'running' AND task.lease_token = i.token
    RETURNING task.*
), e AS (
    UPDATE task_attempt a
       SET outcome = CASE WHEN t.status IN ('completed', 'cancelled') THEN t.status
                          ELSE 'failed' END,
           ended_at = $8, duration_ms = $8 - a.started_at,
           error_data = CASE WHEN t.status IN ('retrying', 'failed') THEN t.error_data END
      FROM t
     WHERE a.task_id = t.id AND a.org_id = $1 AND a.outcome = 'running'
), d AS (
    SELECT run_id,
           count(*) AS ended,
           count(*) FILTER (WHERE status = 'failed') AS failed
      FROM t
     WHERE status IN ('completed', 'failed', 'cancelled')
     GROUP BY run_id
), k AS (
    SELECT r.id, r.task_epoch, x.failed_tasks + d.failed AS failed,
           x.total_tasks - x.completed_tasks - x.failed_tasks - x.cancelled_tasks - d.ended
               AS remaining
      FROM d
      JOIN run r ON r.id = d.run_id AND r.org_id = $1
     CROSS JOIN LATERAL run_task_counts(r.id) x
     WHERE r.auto_complete AND r.completed_at IS NULL
), ac AS (
    UPDATE run r
       SET status = CASE WHEN k.failed > 0 THEN 'failed' ELSE 'completed' END,
           completed_at = $8::bigint, duration_ms = $8::bigint - coalesce(r.started_at, r.created_at),
           updated_at = $8::bigint
      FROM k
     WHERE r.id = k.id AND k.remaining = 0 AND r.task_epoch = k.task_epoch
       AND r.completed_at IS NULL
    RETURNING r.id
), dd AS (
    UPDATE task_dependency e
       SET parent_done = true
      FROM t
     WHERE e.parent_id = ANY($2::uuid[]) AND e.parent_id = t.id
       AND t.status IN ('completed', 'failed', 'cancelled') AND e.org_id = $1 AND NOT e.parent_done
    RETURNING e.child_id, e.parent_id, t.status AS parent_status
), cf AS (
    SELECT d.child_id, array_agg(d.parent_id) AS flipped,
           (array_agg(d.parent_id) FILTER (WHERE d.parent_status <> 'completed'))[1]
               AS failed_parent,
           (array_agg(d.parent_status) FILTER (WHERE d.parent_status <> 'completed'))[1]
               AS failed_status
      FROM dd d
     GROUP BY d.child_id
), cz AS (
    -- Open edges left besides this statement's (its own flips are not in its snapshot), counted
    -- up to 1001 through the partial index of open edges.
    SELECT cf.*,
           (SELECT count(*)
              FROM (SELECT 1
                      FROM task_dependency o
                     WHERE o.org_id = $1 AND o.child_id = cf.child_id AND NOT o.parent_done
                       AND NOT o.parent_id = ANY(cf.flipped)
                     LIMIT 1001) x) AS open_left
      FROM cf
), lc AS (
    -- The children to change, locked in id order: two statements never wait in a cycle.
    SELECT t.id
      FROM task t
      JOIN cz ON cz.child_id = t.id
     WHERE t.org_id = $1 AND t.status = 'blocked'
       AND ((cz.failed_parent IS NOT NULL AND t.on_parent_failure = 'cancel') OR cz.open_left = 0)
     ORDER BY t.id
       FOR NO KEY UPDATE OF t
), ch AS (
    UPDATE task c
       SET status = CASE WHEN cz.failed_parent IS NOT NULL AND c.on_parent_failure = 'cancel'
                         THEN 'cancelled'
                         WHEN c.queued_at IS NOT NULL THEN 'queued'
                         ELSE 'pending' END,
           error_data = CASE WHEN cz.failed_parent IS NOT NULL AND c.on_parent_failure = 'cancel'
                             THEN jsonb_build_object(
                                      'type', 'ParentFailed',
                                      'message', format('Parent task %s ended %s',
                                                        cz.failed_parent, cz.failed_status),
                                      'parentTaskId', cz.failed_parent)
                             ELSE c.error_data END,
           completed_at = CASE WHEN cz.failed_parent IS NOT NULL
                                    AND c.on_parent_failure = 'cancel' THEN $8::bigint END,
           duration_ms = CASE WHEN cz.failed_parent IS NOT NULL
                                   AND c.on_parent_failure = 'cancel'
                              THEN $8::bigint - c.created_at END,
           updated_at = $8::bigint
      FROM cz
     WHERE c.org_id = $1 AND c.id = cz.child_id AND c.status = 'blocked'
       AND ((cz.failed_parent IS NOT NULL AND c.on_parent_failure = 'cancel') OR cz.open_left = 0)
       AND (SELECT count(*) FROM lc) >= 0
    RETURNING c.id, c.run_id, c.org_id, c.status
), c AS (
    -- The tasks ended here and the children cancelled here, counted in one INSERT (a row may
    -- change once per statement), after `ch`: every statement takes parents, then children, then
    -- counter rows, so none waits for another in a cycle.
    INSERT INTO run_counter (run_id, shard, org_id, completed_tasks, failed_tasks, cancelled_tasks)
    SELECT run_id, $9::smallint, org_id,
           count(*) FILTER (WHERE status = 'completed'),
           count(*) FILTER (WHERE status = 'failed'),
           count(*) FILTER (WHERE status = 'cancelled')
      FROM (SELECT run_id, org_id, status FROM t
             WHERE status IN ('completed', 'failed', 'cancelled')
            UNION ALL
            SELECT run_id, org_id, status FROM ch WHERE status = 'cancelled') ended
     GROUP BY run_id, org_id
    ON CONFLICT (run_id, shard) DO UPDATE
       SET completed_tasks = run_counter.completed_tasks + EXCLUDED.completed_tasks,
           failed_tasks    = run_counter.failed_tasks + EXCLUDED.failed_tasks,
           cancelled_tasks = run_counter.cancelled_tasks + EXCLUDED.cancelled_tasks
), s AS (
    SELECT id, status, lease_token, child_epoch
      FROM task
     WHERE org_id = $1 AND id = ANY($2::uuid[])
)
SELECT i.task_id AS ended_id, t.id IS NOT NULL AS ok, coalesce(t.status, s.status) AS status_now,
       s.id IS NOT NULL AS found, coalesce(s.lease_token = i.token, false) AS same_token,
       (SELECT array_agg(t.id)
          FROM t JOIN s ON s.id = t.id
         WHERE t.child_epoch <> s.child_epoch
           AND t.status IN ('completed', 'failed', 'cancelled')) AS recheck_ids,
       (SELECT array_agg(id) FROM ch WHERE status = 'queued') AS released_ids,
       (SELECT array_agg(id) FROM ch WHERE status = 'cancelled') AS cascade_ids,
       (SELECT array_agg(child_id) FROM cz WHERE open_left BETWEEN 1 AND 1000) AS recheck_children,
       (SELECT count(pg_notify('foreman_task_ready', $1))
          FROM (SELECT 1 FROM ch WHERE status = 'queued' LIMIT 1) q) AS notified_ready,
       (SELECT array_agg(k.id) FROM k
         WHERE k.remaining <= 1000 AND k.id NOT IN (SELECT id FROM ac)) AS runs_open,
       (SELECT count(*) FROM ac) AS runs_completed,
       (SELECT count(pg_notify('foreman_task_done', g.ids))
          FROM (SELECT string_agg(d.id::text, ',') AS ids
                  FROM (SELECT id, (row_number() OVER () - 1) / 100 AS n
                          FROM t
                         WHERE status IN ('completed', 'failed', 'cancelled')) d
                 GROUP BY d.n) g) AS notified,
       t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id
  FROM i
  LEFT JOIN t ON t.id = i.task_id
  LEFT JOIN s ON s.id = i.task_id
 ORDER BY i.ord

-- release_tasks --
-- Back to the queue, as if the attempt had not started (graceful shutdown of a worker); a task
-- whose cancel was asked while it ran ends 'cancelled' instead, counted on its run.
-- $1 org, $2 task ids, $3 lease tokens, $4 now, $5 counter shard.
WITH i AS (
    SELECT * FROM unnest($2::uuid[], $3::uuid[]) WITH ORDINALITY AS i(task_id, token, ord)
), t AS (
    UPDATE task
       SET status = CASE WHEN task.cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END,
           attempt = CASE WHEN task.cancel_requested_at IS NULL THEN greatest(task.attempt - 1, 0)
                          ELSE task.attempt END,
           completed_at = CASE WHEN task.cancel_requested_at IS NOT NULL THEN $4::bigint END,
           duration_ms = CASE WHEN task.cancel_requested_at IS NOT NULL
                              THEN $4::bigint - coalesce(task.started_at, task.created_at) END,
           queued_at = coalesce(task.queued_at, $4),
           lease_token = NULL,
           lease_expires_at = NULL,
           worker_id = NULL,
           updated_at = $4
      FROM i
     WHERE task.org_id = $1 AND task.id = ANY($2::uuid[]) AND task.id = i.task_id
       AND task.status = 'running' AND task.lease_token = i.token
    RETURNING task.*
), e AS (
    UPDATE task_attempt a
       SET outcome = CASE WHEN t.status = 'cancelled' THEN 'cancelled' ELSE 'released' END,
           ended_at = $4, duration_ms = $4 - a.started_at
      FROM t
     WHERE a.task_id = t.id AND a.org_id = $1 AND a.outcome = 'running'
), c AS (
    INSERT INTO run_counter (run_id, shard, org_id, cancelled_tasks)
    SELECT run_id, $5::smallint, org_id, count(*) FROM t WHERE status = 'cancelled'
     GROUP BY run_id, org_id
    ON CONFLICT (run_id, shard) DO UPDATE
       SET cancelled_tasks = run_counter.cancelled_tasks + EXCLUDED.cancelled_tasks
), s AS (
    SELECT id, status, lease_token FROM task WHERE org_id = $1 AND id = ANY($2::uuid[])
)
SELECT i.task_id AS released_id, t.id IS NOT NULL AS ok, coalesce(t.status, s.status) AS status_now,
       s.id IS NOT NULL AS found,
       (SELECT count(pg_notify('foreman_task_ready', $1))
          FROM (SELECT 1 FROM t WHERE status = 'queued' LIMIT 1) one) AS notified,
       t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id
  FROM i
  LEFT JOIN t ON t.id = i.task_id
  LEFT JOIN s ON s.id = i.task_id
 ORDER BY i.ord

-- expire_leases --
-- The sweeper, across organisations (its connection is the table owner, which RLS does not
-- restrict because RLS is not FORCEd). SKIP LOCKED: a worker finishing the task right now wins.
-- An expired lease is retried after a backoff while attempts remain (attempt <= max_retries),
-- else failed; a task whose cancel was asked while it ran ends 'cancelled'. $1 now, $2 limit,
-- $3 counter shard.
WITH x AS MATERIALIZED (
    SELECT id
      FROM task
     WHERE status = 'running' AND lease_expires_at < $1
     ORDER BY lease_expires_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), t AS (
    UPDATE task
       SET status = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                         WHEN attempt > max_retries THEN 'failed' ELSE 'retrying' END,
           retry_count = retry_count
                         + (NOT attempt > max_retries AND cancel_requested_at IS NULL)::int,
           run_after = CASE WHEN attempt > max_retries OR cancel_requested_at IS NOT NULL
                            THEN run_after
                            ELSE $1 + (least(2000 * power(2, greatest(attempt, 1) - 1), 300000)
                                       * (0.8 + random() * 0.4))::bigint END,
           error_data = jsonb_build_object(
               'message',
               CASE WHEN NOT attempt > max_retries
                    THEN format('Lease expired on attempt %s; retrying', attempt)
                    ELSE format('Lease expired after %s attempt(s): attempts exhausted', attempt)
               END,
               'type', 'LeaseExpired'),
           completed_at = CASE WHEN attempt > max_retries OR cancel_requested_at IS NOT NULL
                               THEN $1 END,
           duration_ms = CASE WHEN attempt > max_retries OR cancel_requested_at IS NOT NULL
                              THEN $1 - coalesce(started_at, created_at) END,
           lease_token = NULL,
           lease_expires_at = NULL,
           updated_at = $1
     WHERE id IN (SELECT id FROM x) AND status = 'running'
    RETURNING *
), e AS (
    UPDATE task_attempt a
       SET outcome = CASE WHEN t.status = 'cancelled' THEN 'cancelled' ELSE 'lease_expired' END,
           ended_at = $1, duration_ms = $1 - a.started_at, error_data = t.error_data
      FROM t
     WHERE a.task_id = t.id AND a.org_id = t.org_id AND a.outcome = 'running'
), c AS (
    INSERT INTO run_counter (run_id, shard, org_id, completed_tasks, failed_tasks, cancelled_tasks)
    SELECT run_id, $3::smallint, org_id,
           count(*) FILTER (WHERE status = 'completed'),
           count(*) FILTER (WHERE status = 'failed'),
           count(*) FILTER (WHERE status = 'cancelled')
      FROM t
     WHERE status IN ('completed', 'failed', 'cancelled')
     GROUP BY run_id, org_id
    ON CONFLICT (run_id, shard) DO UPDATE
       SET completed_tasks = run_counter.completed_tasks + EXCLUDED.completed_tasks,
           failed_tasks    = run_counter.failed_tasks + EXCLUDED.failed_tasks,
           cancelled_tasks = run_counter.cancelled_tasks + EXCLUDED.cancelled_tasks
), d AS (
    SELECT run_id,
           count(*) AS ended,
           count(*) FILTER (WHERE status = 'failed') AS failed
      FROM t
     WHERE status IN ('completed', 'failed', 'cancelled')
     GROUP BY run_id
), k AS (
    SELECT r.id, r.task_epoch, x.failed_tasks + d.failed AS failed,
           x.total_tasks - x.completed_tasks - x.failed_tasks - x.cancelled_tasks - d.ended
               AS remaining
      FROM d
      JOIN run r ON r.id = d.run_id
     CROSS JOIN LATERAL run_task_counts(r.id) x
     WHERE r.auto_complete AND r.completed_at IS NULL
), ac AS (
    UPDATE run r
       SET status = CASE WHEN k.failed > 0 THEN 'failed' ELSE 'completed' END,
           completed_at = $1::bigint, duration_ms = $1::bigint - coalesce(r.started_at, r.created_at),
           updated_at = $1::bigint
      FROM k
     WHERE r.id = k.id AND k.remaining = 0 AND r.task_epoch = k.task_epoch
       AND r.completed_at IS NULL
    RETURNING r.id
)
SELECT (SELECT count(ac.id) FROM ac) AS runs_completed,
       (SELECT count(pg_notify('foreman_task_done', g.ids))
          FROM (SELECT string_agg(d.id::text, ',') AS ids
                  FROM (SELECT id, (row_number() OVER () - 1) / 100 AS n
                          FROM t
                         WHERE status IN ('completed', 'failed', 'cancelled')) d
                 GROUP BY d.n) g) AS notified,
       t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id
  FROM t

-- ready_tasks --
-- Ready tasks of every organisation, in the order of task_ready_idx, from a cursor on; the raw
-- run_after comes first (the task's own run_after column hides it unless it lies after
-- created_at). $1 ready before, $2..$5 the cursor (org, priority, run_after, id), $6 limit.
SELECT t.run_after AS cursor_run_after,
       t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id
  FROM task t
 WHERE t.status IN ('queued', 'retrying')
   AND (t.org_id, t.priority, t.run_after, t.id) > ($2, $3, $4, $5::uuid)
   AND t.run_after <= $1 AND t.updated_at <= $1
 ORDER BY t.org_id, t.priority, t.run_after, t.id
 LIMIT $6
