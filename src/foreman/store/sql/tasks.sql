-- Tasks (store/tasks.py): insert, read. Each statement is whole: store/queries.py loads it by the
-- name in its `-- name --` line; the comment lines right below that line describe it.
-- The task columns come last, named as the fields of models.Task; run_after only when it lies
-- after created_at (a delayed task), the lease token never (only its claimer sees it).

-- insert_task --
-- One statement: check run and parent, insert (idempotently), count the task on a shard of its
-- run, and wake waiting claimers when it is ready now. The run is locked FOR KEY SHARE (it
-- cannot be deleted until this commits): the work of a foreign key, once per statement. Autocommit: no BEGIN/COMMIT round trips.
-- An auto-complete run (migration 0014) takes the task only while it has not ended: `u` bumps
-- its task_epoch (so a completion that counted without this task is not applied) and re-checks
-- completed_at on the latest row after the row lock; no `u` row, no insert (run_open false: 409).
-- $1 org, $2 run, $3 parent, $4 id, $5 type, $6 status, $7 input, $8 metadata, $9 max retries,
-- $10 priority, $11 run after, $12 idempotency key, $13 now, $14 counter shard, $15 on parent
-- failure (a task with dependencies: status 'blocked', store/dependencies.py adds its edges in the
-- same transaction), $16 enqueue (queued_at: a blocked task is released to queued, else pending),
-- $17 traceparent (README "Traces").
WITH r AS (
    SELECT id, auto_complete FROM run WHERE org_id = $1 AND id = $2 FOR KEY SHARE
), u AS (
    UPDATE run SET task_epoch = task_epoch + 1
     WHERE org_id = $1 AND id IN (SELECT id FROM r WHERE auto_complete) AND completed_at IS NULL
    RETURNING id
), p AS (
    SELECT id FROM task WHERE org_id = $1 AND id = $3 AND run_id = $2
), t AS (
    INSERT INTO task (id, run_id, parent_task_id, org_id, type, status, input_data, metadata,
                      max_retries, priority, run_after, idempotency_key, created_at, updated_at,
                      queued_at, on_parent_failure, traceparent)
    SELECT $4, r.id, $3, $1, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13,
           CASE WHEN $16::bool THEN $13::bigint END, $15, $17
      FROM r
     WHERE ($3::uuid IS NULL OR EXISTS (SELECT 1 FROM p))
       AND (NOT r.auto_complete OR EXISTS (SELECT 1 FROM u))
    ON CONFLICT (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING *
), c AS (
    INSERT INTO run_counter (run_id, shard, org_id, total_tasks)
    SELECT run_id, $14, org_id, 1 FROM t
    ON CONFLICT (run_id, shard) DO UPDATE SET total_tasks = run_counter.total_tasks + 1
)
SELECT EXISTS (SELECT 1 FROM r) AS run_found, EXISTS (SELECT 1 FROM p) AS parent_found,
       NOT EXISTS (SELECT 1 FROM r WHERE auto_complete) OR EXISTS (SELECT 1 FROM u) AS run_open,
       CASE WHEN t.status = 'queued' AND t.run_after <= $13
            THEN pg_notify('foreman_task_ready', $1) END AS notified,
       t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id
  FROM (SELECT 1) AS one LEFT JOIN t ON true

-- insert_tasks --
-- Many tasks in one statement (POST /tasks/batch): all of them or none. A parent may be an
-- existing task of the same run or an earlier task of the batch. Idempotent repeats (keys that
-- exist, or repeat within the batch) return the existing task; counters grow once per run.
-- $1 org, $2..$12 one array per column (ids, runs, parents, types, statuses, inputs, metadata,
-- max retries, priorities, run after, idempotency keys), $13 now, $14 counter shard, $15 on parent
-- failure, $16 enqueue (as insert_task's), $17 traceparents. Auto-complete
-- runs: as insert_task (an ended one refuses the whole batch: run_open false).
WITH i AS (
    SELECT *
      FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::jsonb[],
                  $8::jsonb[], $9::int[], $10::int[], $11::bigint[], $12::text[], $15::text[],
                  $16::bool[], $17::text[])
           WITH ORDINALITY AS i(id, run_id, parent_task_id, type, status, input_data, metadata,
                                max_retries, priority, run_after, idempotency_key,
                                on_parent_failure, enqueue, traceparent, ord)
), r AS (
    SELECT id, auto_complete FROM run WHERE org_id = $1 AND id = ANY($3::uuid[]) FOR KEY SHARE
), u AS (
    UPDATE run SET task_epoch = task_epoch + 1
     WHERE org_id = $1 AND id IN (SELECT id FROM r WHERE auto_complete) AND completed_at IS NULL
    RETURNING id
), p AS (
    SELECT id, run_id FROM task WHERE org_id = $1 AND id = ANY($4::uuid[])
), v AS (
    SELECT i.ord,
           i.run_id IN (SELECT id FROM r) AS run_ok,
           i.run_id NOT IN (SELECT id FROM r WHERE auto_complete)
               OR i.run_id IN (SELECT id FROM u) AS run_open,
           (i.parent_task_id IS NULL
            OR EXISTS (SELECT 1 FROM p WHERE p.id = i.parent_task_id AND p.run_id = i.run_id)
            OR EXISTS (SELECT 1 FROM i AS e
                        WHERE e.id = i.parent_task_id AND e.run_id = i.run_id AND e.ord < i.ord)
           ) AS parent_ok
      FROM i
), ins AS (
    INSERT INTO task (id, run_id, parent_task_id, org_id, type, status, input_data, metadata,
                      max_retries, priority, run_after, idempotency_key, created_at, updated_at,
                      queued_at, on_parent_failure, traceparent)
    SELECT i.id, i.run_id, i.parent_task_id, $1, i.type, i.status, i.input_data, i.metadata,
           i.max_retries, i.priority, i.run_after, i.idempotency_key, $13, $13,
           CASE WHEN i.enqueue THEN $13::bigint END, i.on_parent_failure, i.traceparent
      FROM i
     WHERE NOT EXISTS (SELECT 1 FROM v WHERE NOT (v.run_ok AND v.parent_ok AND v.run_open))
     ORDER BY i.ord
    ON CONFLICT (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING *
), c AS (
    INSERT INTO run_counter (run_id, shard, org_id, total_tasks)
    SELECT run_id, $14, org_id, count(*) FROM ins GROUP BY run_id, org_id
    ON CONFLICT (run_id, shard) DO UPDATE
       SET total_tasks = run_counter.total_tasks + EXCLUDED.total_tasks
), x AS (
    SELECT * FROM task
     WHERE org_id = $1 AND idempotency_key = ANY($12::text[])
), m AS (
    SELECT i.ord, ins.* FROM i JOIN ins ON ins.id = i.id
    UNION ALL
    SELECT i.ord, k.*
      FROM i JOIN (SELECT * FROM ins UNION ALL SELECT * FROM x) k
        ON k.idempotency_key = i.idempotency_key
     WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.id = i.id)
)
SELECT v.run_ok, v.parent_ok, v.run_open,
       (SELECT count(pg_notify('foreman_task_ready', $1))
          FROM (SELECT 1 FROM ins WHERE status = 'queued' AND run_after <= $13 LIMIT 1) q)
           AS notified,
       t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id
  FROM v
  LEFT JOIN m AS t ON t.ord = v.ord
 ORDER BY v.ord

-- insert_plain_tasks --
-- insert_tasks for a batch whose items carry no idempotency key and no dependsOn, answered with
-- ids only (Prefer: return=minimal): the server made every id, so nothing comes back per row.
-- The checks are insert_tasks' (the run, a parent in the same run, an auto-complete run still
-- open; no item can name another as its parent: the server makes their ids), a parent looked
-- up by its primary key only for an item that has one; `bad` is the first item that fails them,
-- and then nothing is inserted. The
-- inserts are not read (no RETURNING): PostgreSQL runs a data-modifying WITH once, to the end.
-- The counters grow by the items per run, from the input. One NOTIFY at most, as insert_tasks.
-- Every column comes as one parameter that is no array (asyncpg checks each element of an
-- array parameter in Python): ids, words and numbers as comma-separated text ('' for a NULL
-- parent; a batch of one without a parent: '' is the empty array, which ROWS FROM pads with a
-- NULL), types and JSON values as one JSON array each (JSON null: no metadata).
-- $1 org, $2 ids, $3 runs, $4 parents, $5 types, $6 statuses, $7 inputs, $8 metadata, $9 max
-- retries, $10 priorities, $11 run after, $12 now, $13 counter shard, $14 enqueue.
WITH i AS (
    SELECT *
      FROM ROWS FROM (unnest(string_to_array($2, ',')::uuid[]),
                      unnest(string_to_array($3, ',')::uuid[]),
                      unnest(string_to_array($4, ',', '')::uuid[]),
                      jsonb_array_elements_text($5::jsonb),
                      unnest(string_to_array($6, ',')),
                      jsonb_array_elements($7::jsonb),
                      jsonb_array_elements($8::jsonb),
                      unnest(string_to_array($9, ',')::int[]),
                      unnest(string_to_array($10, ',')::int[]),
                      unnest(string_to_array($11, ',')::bigint[]),
                      unnest(string_to_array($14, ',')::bool[]))
           WITH ORDINALITY AS i(id, run_id, parent_task_id, type, status, input_data, metadata,
                                max_retries, priority, run_after, enqueue, ord)
), r AS (
    SELECT id, auto_complete FROM run
     WHERE org_id = $1 AND id = ANY(string_to_array($3, ',')::uuid[])
       FOR KEY SHARE
), u AS (
    UPDATE run SET task_epoch = task_epoch + 1
     WHERE org_id = $1 AND id IN (SELECT id FROM r WHERE auto_complete) AND completed_at IS NULL
    RETURNING id
), bad AS (
    SELECT *
      FROM (SELECT i.ord, r.id IS NOT NULL AS run_ok,
                   i.parent_task_id IS NULL
                       OR EXISTS (SELECT 1 FROM task AS p
                                   WHERE p.org_id = $1 AND p.id = i.parent_task_id
                                     AND p.run_id = i.run_id) AS parent_ok,
                   r.auto_complete IS NOT TRUE OR i.run_id IN (SELECT id FROM u) AS run_open
              FROM i
              LEFT JOIN r ON r.id = i.run_id) AS checked
     WHERE NOT (run_ok AND parent_ok AND run_open)
     ORDER BY ord
     LIMIT 1
), ins AS (
    INSERT INTO task (id, run_id, parent_task_id, org_id, type, status, input_data, metadata,
                      max_retries, priority, run_after, created_at, updated_at, queued_at)
    SELECT i.id, i.run_id, i.parent_task_id, $1, i.type, i.status, i.input_data,
           NULLIF(i.metadata, 'null'), i.max_retries, i.priority, i.run_after, $12, $12,
           CASE WHEN i.enqueue THEN $12::bigint END
      FROM i
     WHERE NOT EXISTS (SELECT 1 FROM bad)
), c AS (
    INSERT INTO run_counter (run_id, shard, org_id, total_tasks)
    SELECT run_id, $13, $1, count(*) FROM i WHERE NOT EXISTS (SELECT 1 FROM bad) GROUP BY run_id
    ON CONFLICT (run_id, shard) DO UPDATE
       SET total_tasks = run_counter.total_tasks + EXCLUDED.total_tasks
)
SELECT bad.ord - 1 AS failed_index, bad.run_ok, bad.parent_ok, bad.run_open,
       (SELECT count(pg_notify('foreman_task_ready', $1))
          FROM (SELECT 1 FROM i WHERE status = 'queued' AND run_after <= $12
                  AND NOT EXISTS (SELECT 1 FROM bad) LIMIT 1) q) AS notified
  FROM (SELECT 1) AS one
  LEFT JOIN bad ON true

-- get_task --
-- $1 org, $2 task id.
SELECT * FROM task_answer WHERE org_id = $1 AND id = $2

-- get_task_by_key --
-- The task created with an idempotency key. $1 org, $2 key.
SELECT * FROM task_answer WHERE org_id = $1 AND idempotency_key = $2

-- retry_task --
-- POST /tasks/:id/retry: a failed or cancelled task is ready again with one more attempt allowed
-- (max_retries grows to the attempts made, so the next attempt is allowed and a further failure
-- ends it, unless the task still had attempts of its own). The old status is read under the row
-- lock (`s`, FOR UPDATE: after a concurrent change it sees the new row, so two retries move the
-- task once), and the run's counter of that status goes down by one on a shard in the same
-- statement, so counters stay exact. The error data stays as the last attempt left it.
-- The dependents cancelled because of it (errorData ParentFailed naming it), and theirs in turn,
-- are blocked again with their edges from it reopened (`v`, `rc`, `re`), as a retried step of a
-- Hatchet or Prefect flow re-opens what its failure skipped: they run when it completes, or are
-- cancelled again when it fails. One that another failed or cancelled parent also ended stays
-- cancelled. $1 org, $2 task id, $3 now, $4 counter shard.
WITH RECURSIVE s AS (
    SELECT id, status FROM task WHERE org_id = $1 AND id = $2 FOR UPDATE
), t AS (
    UPDATE task
       SET status = 'queued',
           max_retries = greatest(task.max_retries, task.attempt),
           retry_count = task.retry_count + 1,
           run_after = $3,
           queued_at = $3,
           completed_at = NULL,
           duration_ms = NULL,
           lease_token = NULL,
           lease_expires_at = NULL,
           updated_at = $3
      FROM s
     WHERE task.org_id = $1 AND task.id = s.id AND s.status IN ('failed', 'cancelled')
    RETURNING task.*
), v (id) AS (
    -- The children cancelled because of the task, then theirs because of them, ...
    SELECT e.child_id
      FROM t
      JOIN task_dependency e ON e.org_id = $1 AND e.parent_id = t.id
    UNION
    SELECT e.child_id
      FROM v
      JOIN task_dependency e ON e.org_id = $1 AND e.parent_id = v.id
      JOIN task c ON c.org_id = $1 AND c.id = v.id
     WHERE c.status = 'cancelled'
), rc AS (
    -- ... of them, those no other failed or cancelled parent ended.
    UPDATE task c
       SET status = 'blocked', error_data = NULL, completed_at = NULL, duration_ms = NULL,
           updated_at = $3
     WHERE c.org_id = $1 AND c.id IN (SELECT id FROM v) AND c.status = 'cancelled'
       AND c.error_data ->> 'type' = 'ParentFailed'
       AND NOT EXISTS (SELECT 1
                         FROM task_dependency o
                         JOIN task p ON p.org_id = $1 AND p.id = o.parent_id
                        WHERE o.org_id = $1 AND o.child_id = c.id AND o.parent_id <> $2
                          AND p.status IN ('failed', 'cancelled')
                          AND NOT (p.status = 'cancelled' AND p.error_data ->> 'type' = 'ParentFailed'
                                   AND p.id IN (SELECT id FROM v)))
    RETURNING c.id
), re AS (
    UPDATE task_dependency e
       SET parent_done = false
     WHERE e.org_id = $1 AND e.child_id IN (SELECT id FROM rc)
       AND (e.parent_id = $2 OR e.parent_id IN (SELECT id FROM rc))
), c AS (
    INSERT INTO run_counter (run_id, shard, org_id, failed_tasks, cancelled_tasks)
    SELECT t.run_id, $4::smallint, t.org_id, -(s.status = 'failed')::int,
           -(s.status = 'cancelled')::int - (SELECT count(*) FROM rc)
      FROM t, s
    ON CONFLICT (run_id, shard) DO UPDATE
       SET failed_tasks    = run_counter.failed_tasks + EXCLUDED.failed_tasks,
           cancelled_tasks = run_counter.cancelled_tasks + EXCLUDED.cancelled_tasks
)
SELECT s.status AS status_before,
       (SELECT count(pg_notify('foreman_task_ready', $1)) FROM t) AS notified,
       t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id
  FROM s
  LEFT JOIN t ON true

-- list_attempts --
-- Every attempt of a task, oldest first (task_attempt, migration 0012); found says whether the
-- task exists (a task never claimed has no attempt). $1 org, $2 task id.
SELECT EXISTS (SELECT 1 FROM task WHERE org_id = $1 AND id = $2) AS found,
       a.attempt, a.worker_id, a.started_at, a.ended_at, a.duration_ms, a.outcome, a.error_data
  FROM (SELECT 1) AS one
  LEFT JOIN task_attempt a ON a.org_id = $1 AND a.task_id = $2
 ORDER BY a.started_at, a.attempt
