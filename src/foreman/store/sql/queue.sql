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
--   ends tasks answers the open auto-complete runs of the tasks it ended (`runs_ended`, and the runs
--   of the children it cancelled, `runs_cancelled`; no count of their tasks here and no
--   correlated subquery: either kept PostgreSQL from the statement's generic plan), which its
--   caller completes right after the commit with a fresh snapshot (runs.sql complete_runs: two
--   statements ending a run's last tasks concurrently do not see each other, the later commit
--   sees both); the sweeper catches any left.
-- * Dependencies (migrations 0015, 0021): a statement that ends tasks with children calls
--   end_dependents() in its select list (`dep`), which releases or cancels their blocked children,
--   transitively, in the same transaction, with a counter shard of its own ($n); `ends_parent`: an
--   ended task with children (child_epoch on the locked row shows a child added while the
--   statement waited for it, the edge lookup one added with its parent). The children left with few open edges
--   (`recheck_children`) are looked at again after the commit (store/dependencies.py).
-- * Ended tasks wake `wait` long-polls: NOTIFY foreman_task_done, one notification per 100 ended
--   tasks (a payload holds at most 8000 bytes). As an uncorrelated subquery in the select list it
--   runs once, when the statement returns a row.
-- * `s`, the rows as they were before the statement, explains a refusal. `id = ANY(array)` makes
--   PostgreSQL look each id up in the primary key; a join against the unnest() rows may instead
--   scan every task of the organisation. The statements that end attempts (finish_tasks,
--   release_tasks) read `s` only for a row they refused: a lateral lookup by primary key under
--   `t.id IS NULL`, kept a subquery (OFFSET 0) so that the condition gates the lookup instead of
--   filtering its answer. The array form read every task of the organisation whenever the
--   table's statistics were older than its rows (a fresh database filling up: 1,262 heap
--   blocks, 20,000 rows removed by the filter, 19 ms of a 40 ms completion of 100 tasks).
-- * The statements that change tasks named by the caller (heartbeat, finish_tasks,
--   release_tasks) find each task's lease token (and finish_tasks its outcome) in one jsonb
--   object keyed by task id (`v`), not by joining the input rows: that join's plan rested on
--   estimates of the organisation's running tasks, and its nested-loop form paid for every pair
--   of task and input row (finish_tasks says more). heartbeat reads `s` for every row, through
--   the primary key (a lateral lookup).
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

-- claim_task_ids --
-- By id (jobs a bullmq worker received, one or many at once; store/queue.py claim_task is this
-- with one id): any not-yet-terminal task that nobody holds. A running task whose lease expired
-- is taken over like the sweeper would: the lost attempt counts as a retry, and only while
-- attempts remain (the sweeper fails it otherwise). The ids are distinct (store/queue.py answers
-- repeats). $1 org, $2 task ids, $3 now, $4 lease ms, $5 worker id.
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
), v AS MATERIALIZED (
    SELECT jsonb_object_agg(task_id::text, token) AS of_id FROM i
), h AS (
    UPDATE task
       SET lease_expires_at = $4::bigint + $5::bigint
     WHERE task.org_id = $1 AND task.id = ANY($2::uuid[]) AND task.status = 'running'
       AND task.lease_token = ((SELECT of_id FROM v) ->> task.id::text)::uuid
    RETURNING task.id, task.lease_expires_at
)
SELECT i.task_id, h.id IS NOT NULL AS ok,
       coalesce(s.status = 'cancelled' OR s.cancel_requested_at IS NOT NULL, false) AS cancelled,
       h.lease_expires_at, s.id IS NOT NULL AS found
  FROM i
  LEFT JOIN h ON h.id = i.task_id
  LEFT JOIN LATERAL (SELECT x.id, x.status, x.cancel_requested_at
                       FROM task x
                      WHERE x.org_id = $1 AND x.id = i.task_id
                     OFFSET 0) s ON true
 ORDER BY i.ord

-- finish_tasks --
-- complete and fail, single or batch. The next status is 'cancelled' when a cancel was asked while
-- the attempt ran (cancel_requested_at, migration 0013; the result is not kept), else
-- 'completed', or 'retrying' while the failure is retryable and attempts remain (maxRetries 0 =
-- one attempt: attempt 1 <= 0 is false), else 'failed', decided once per task (`n`). The lease
-- token stays on the row, so a repeat of the same call is recognised (and changes nothing) while
-- a newer attempt's claim replaces it.
-- The update reads each task's input row from `v`, one jsonb object keyed by task id (output and
-- error data wrapped in an array, so that SQL NULL and JSON null stay apart: an absent one is
-- JSON null in the row, which `nullif(…, 'null')` turns back into SQL NULL), not through a join
-- with `i`: the join's plan rests on estimates of how many tasks of the organisation are running,
-- which are off whenever the statistics are older than the table, and its nested-loop form
-- compared every task with every input row and copied the input row for each pair (PostgreSQL's
-- copy for a recheck of a concurrently updated row): a completion of 500 took 58.5 ms that way,
-- 27.8 ms with `v` (benchmarks/README.md, session 8).
-- $1 org, $2 task ids, $3 lease tokens, $4 outcomes, $5 output data, $6 error data, $7 retryable,
-- $8 now, $9 counter shard.
WITH i AS (
    SELECT *
      FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::jsonb[], $6::jsonb[], $7::bool[])
           WITH ORDINALITY AS i(task_id, token, outcome, output_data, error_data, retryable, ord)
), v AS MATERIALIZED (
    SELECT jsonb_object_agg(
               task_id::text,
               jsonb_build_array(token, outcome, retryable,
                                 CASE WHEN output_data IS NOT NULL
                                      THEN jsonb_build_array(output_data) END,
                                 CASE WHEN error_data IS NOT NULL
                                      THEN jsonb_build_array(error_data) END)) AS of_id
      FROM i
), t AS (
    UPDATE task
       SET (status, output_data, error_data, retry_count, run_after, completed_at, duration_ms) = (
               SELECT n.status,
                      CASE WHEN n.status = 'completed' THEN nullif(n.v -> 3, 'null') -> 0
                           ELSE task.output_data END,
                      CASE WHEN n.status <> 'cancelled' AND n.v ->> 1 = 'failed'
                           THEN nullif(n.v -> 4, 'null') -> 0 ELSE task.error_data END,
                      task.retry_count + (n.status = 'retrying')::int,
                      CASE WHEN n.status = 'retrying'
                           THEN $8::bigint
                                + (least(2000 * power(2, greatest(task.attempt, 1) - 1), 300000)
                                   * (0.8 + random() * 0.4))::bigint
                           ELSE task.run_after END,
                      CASE WHEN n.status = 'retrying' THEN NULL ELSE $8::bigint END,
                      CASE WHEN n.status = 'retrying' THEN NULL
                           ELSE $8::bigint - coalesce(task.started_at, task.created_at) END
                 FROM (SELECT CASE WHEN task.cancel_requested_at IS NOT NULL THEN 'cancelled'
                                   WHEN x.v ->> 1 = 'completed' THEN 'completed'
                                   WHEN (x.v ->> 2)::bool AND task.attempt <= task.max_retries
                                   THEN 'retrying'
                                   ELSE 'failed' END AS status,
                              x.v
                         FROM (SELECT (SELECT of_id FROM v) -> task.id::text AS v OFFSET 0) x
                       OFFSET 0) n),
           lease_expires_at = NULL,
           updated_at = $8
     WHERE task.org_id = $1 AND task.id = ANY($2::uuid[]) AND task.status = 'running'
       AND task.lease_token = ((SELECT of_id FROM v) -> task.id::text ->> 0)::uuid
    RETURNING task.*,
              task.status IN ('completed', 'failed', 'cancelled')
                  AND (task.child_epoch > 0
                       OR EXISTS (SELECT 1 FROM task_dependency d WHERE d.parent_id = task.id))
                  AS ends_parent
), e AS (
    UPDATE task_attempt a
       SET outcome = CASE WHEN t.status IN ('completed', 'cancelled') THEN t.status
                          ELSE 'failed' END,
           ended_at = $8, duration_ms = $8 - a.started_at,
           error_data = CASE WHEN t.status IN ('retrying', 'failed') THEN t.error_data END
      FROM t
     WHERE a.task_id = t.id AND a.org_id = $1 AND a.outcome = 'running'
), c AS (
    INSERT INTO run_counter (run_id, shard, org_id, completed_tasks, failed_tasks, cancelled_tasks)
    SELECT run_id, $9::smallint, org_id,
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
), dep AS (
    SELECT x.*
      FROM end_dependents(ARRAY(SELECT id FROM t WHERE ends_parent), $8, $10::smallint) x
     WHERE EXISTS (SELECT 1 FROM t WHERE ends_parent)
)
SELECT i.task_id AS ended_id, t.id IS NOT NULL AS ok, coalesce(t.status, s.status) AS status_now,
       t.id IS NOT NULL OR s.id IS NOT NULL AS found,
       t.id IS NOT NULL OR coalesce(s.lease_token = i.token, false) AS same_token,
       dep.released AS released_ids, dep.recheck AS recheck_children,
       (SELECT array_agg(r.id)
          FROM run r
         WHERE r.id IN (SELECT run_id FROM t WHERE status IN ('completed', 'failed', 'cancelled'))
           AND r.auto_complete AND r.completed_at IS NULL) AS runs_ended,
       dep.cancelled_runs AS runs_cancelled,
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
  LEFT JOIN LATERAL (SELECT x.id, x.status, x.lease_token
                       FROM task x
                      WHERE t.id IS NULL AND x.org_id = $1 AND x.id = i.task_id
                     OFFSET 0) s ON true
  LEFT JOIN dep ON true
 ORDER BY i.ord

-- release_tasks --
-- Back to the queue, as if the attempt had not started (graceful shutdown of a worker); a task
-- whose cancel was asked while it ran ends 'cancelled' instead, counted on its run.
-- $1 org, $2 task ids, $3 lease tokens, $4 now, $5 counter shard.
WITH i AS (
    SELECT * FROM unnest($2::uuid[], $3::uuid[]) WITH ORDINALITY AS i(task_id, token, ord)
), v AS MATERIALIZED (
    SELECT jsonb_object_agg(task_id::text, token) AS of_id FROM i
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
     WHERE task.org_id = $1 AND task.id = ANY($2::uuid[]) AND task.status = 'running'
       AND task.lease_token = ((SELECT of_id FROM v) ->> task.id::text)::uuid
    RETURNING task.*,
              task.status IN ('completed', 'failed', 'cancelled')
                  AND (task.child_epoch > 0
                       OR EXISTS (SELECT 1 FROM task_dependency d WHERE d.parent_id = task.id))
                  AS ends_parent
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
), dep AS (
    SELECT x.*
      FROM end_dependents(ARRAY(SELECT id FROM t WHERE ends_parent), $4, $6::smallint) x
     WHERE EXISTS (SELECT 1 FROM t WHERE ends_parent)
)
SELECT i.task_id AS released_id, t.id IS NOT NULL AS ok, coalesce(t.status, s.status) AS status_now,
       t.id IS NOT NULL OR s.id IS NOT NULL AS found,
       dep.released AS released_ids, dep.recheck AS recheck_children,
       (SELECT array_agg(r.id)
          FROM run r
         WHERE r.id IN (SELECT run_id FROM t WHERE status = 'cancelled')
           AND r.auto_complete AND r.completed_at IS NULL) AS runs_ended,
       dep.cancelled_runs AS runs_cancelled,
       (SELECT count(pg_notify('foreman_task_ready', $1))
          FROM (SELECT 1 FROM t WHERE status = 'queued' LIMIT 1) one) AS notified,
       t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id
  FROM i
  LEFT JOIN t ON t.id = i.task_id
  LEFT JOIN LATERAL (SELECT x.id, x.status
                       FROM task x
                      WHERE t.id IS NULL AND x.org_id = $1 AND x.id = i.task_id
                     OFFSET 0) s ON true
  LEFT JOIN dep ON true
 ORDER BY i.ord

-- expire_leases --
-- The sweeper, across organisations (its connection is the table owner, which RLS does not
-- restrict because RLS is not FORCEd). SKIP LOCKED: a worker finishing the task right now wins.
-- An expired lease is retried after a backoff while attempts remain (attempt <= max_retries),
-- else failed; a task whose cancel was asked while it ran ends 'cancelled' (its error data as it
-- was: no LeaseExpired "retrying" message on a task that will not run again). $1 now, $2 limit,
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
           error_data = CASE WHEN cancel_requested_at IS NOT NULL THEN error_data
                             ELSE jsonb_build_object(
                                 'message',
                                 CASE WHEN NOT attempt > max_retries
                                      THEN format('Lease expired on attempt %s; retrying', attempt)
                                      ELSE format('Lease expired after %s attempt(s): attempts '
                                                  'exhausted', attempt)
                                 END,
                                 'type', 'LeaseExpired') END,
           completed_at = CASE WHEN attempt > max_retries OR cancel_requested_at IS NOT NULL
                               THEN $1 END,
           duration_ms = CASE WHEN attempt > max_retries OR cancel_requested_at IS NOT NULL
                              THEN $1 - coalesce(started_at, created_at) END,
           lease_token = NULL,
           lease_expires_at = NULL,
           updated_at = $1
     WHERE id IN (SELECT id FROM x) AND status = 'running'
    RETURNING *,
              task.status IN ('completed', 'failed', 'cancelled')
                  AND (task.child_epoch > 0
                       OR EXISTS (SELECT 1 FROM task_dependency d WHERE d.parent_id = task.id))
                  AS ends_parent
), e AS (
    UPDATE task_attempt a
       SET outcome = CASE WHEN t.status = 'cancelled' THEN 'cancelled' ELSE 'lease_expired' END,
           ended_at = $1, duration_ms = $1 - a.started_at,
           error_data = CASE WHEN t.status <> 'cancelled' THEN t.error_data END
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
), dep AS (
    SELECT x.*
      FROM end_dependents(ARRAY(SELECT id FROM t WHERE ends_parent), $1, $4::smallint) x
     WHERE EXISTS (SELECT 1 FROM t WHERE ends_parent)
)
SELECT dep.released AS released_ids, dep.recheck AS recheck_children,
       (SELECT array_agg(r.id)
          FROM run r
         WHERE r.id IN (SELECT run_id FROM t WHERE status IN ('completed', 'failed', 'cancelled'))
           AND r.auto_complete AND r.completed_at IS NULL) AS runs_ended,
       dep.cancelled_runs AS runs_cancelled,
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
  LEFT JOIN dep ON true

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
