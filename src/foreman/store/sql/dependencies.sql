-- Task dependencies (store/dependencies.py, migration 0015 explains the tables). Each statement is
-- whole: store/queries.py loads it by the name in its `-- name --` line.
--
-- The step that follows a parent's end, written out in finish_tasks (store/sql/queue.sql) and in
-- end_dependents below: flip each edge of the ended parents once (`dd`), decrement the children's
-- counter shards by the edges flipped (`sc`, RETURNING the value on the latest row), and update
-- each blocked child once (`ch`): open_shards minus the shards brought to zero; 'cancelled' when
-- a parent failed or was cancelled and the child's onParentFailure is 'cancel' (errorData
-- ParentFailed), else released ('queued' if it was enqueued, else 'pending') once no shard is open.
-- `ch` updates only blocked children, re-checked on the latest row: a child is released or
-- cancelled exactly once. Children cancelled here are counted on shard $n of their run (another
-- shard than the statement's own counter update, which an INSERT ... ON CONFLICT cannot touch
-- twice), and their own children are ended by the caller with end_dependents (`cascade_ids`).

-- add_dependencies --
-- The edges of new children (inserted 'blocked' earlier in the same transaction) to their parents:
-- existing tasks or earlier items of the batch, all of the child's run (else `bad_*`: the caller
-- rolls back). Each existing parent's child_epoch is bumped under its row lock, which also reads
-- its latest status: a parent that ended before counts as done (and, failed or cancelled, may
-- cancel the child at once). $1 org, $2 child ids, $3 parent ids (pairs), $4 now, $5 counter shard.
WITH e AS (
    SELECT DISTINCT child_id, parent_id
      FROM unnest($2::uuid[], $3::uuid[]) AS e(child_id, parent_id)
), c AS (
    SELECT id, run_id FROM task WHERE org_id = $1 AND id = ANY($2::uuid[])
), pe AS (
    -- A parent that is itself one of the new children is new (nobody else can end it) and is
    -- updated by `ch` below: a row may change only once per statement, so it is only read here.
    UPDATE task p
       SET child_epoch = p.child_epoch + 1
     WHERE p.org_id = $1 AND p.id = ANY($3::uuid[]) AND NOT p.id = ANY($2::uuid[])
    RETURNING p.id, p.run_id, p.status
), pl AS (
    SELECT id, run_id, status FROM pe
    UNION ALL
    SELECT id, run_id, status
      FROM task
     WHERE org_id = $1 AND id = ANY($3::uuid[]) AND id = ANY($2::uuid[])
), bad AS (
    SELECT e.child_id, e.parent_id
      FROM e
      JOIN c ON c.id = e.child_id
      LEFT JOIN pl ON pl.id = e.parent_id
     WHERE pl.id IS NULL OR pl.run_id <> c.run_id
     LIMIT 1
), ins AS (
    INSERT INTO task_dependency (parent_id, child_id, org_id, run_id, shard, parent_done)
    SELECT e.parent_id, e.child_id, $1, pl.run_id, get_byte(uuid_send(e.parent_id), 15) % 16,
           pl.status IN ('completed', 'failed', 'cancelled')
      FROM e
      JOIN pl ON pl.id = e.parent_id
     WHERE NOT EXISTS (SELECT 1 FROM bad)
    RETURNING child_id, parent_id, shard, parent_done
), k AS (
    INSERT INTO dependency_counter (child_id, shard, org_id, open_parents)
    SELECT child_id, shard, $1, count(*) FROM ins WHERE NOT parent_done GROUP BY child_id, shard
), cs AS (
    SELECT i.child_id,
           count(DISTINCT i.shard) FILTER (WHERE NOT i.parent_done) AS open_shards,
           (array_agg(i.parent_id ORDER BY i.parent_id)
               FILTER (WHERE pl.status IN ('failed', 'cancelled')))[1] AS failed_parent,
           (array_agg(pl.status ORDER BY i.parent_id)
               FILTER (WHERE pl.status IN ('failed', 'cancelled')))[1] AS failed_status
      FROM ins i
      JOIN pl ON pl.id = i.parent_id
     GROUP BY i.child_id
), ch AS (
    UPDATE task c
       SET open_shards = cs.open_shards,
           status = CASE WHEN cs.failed_parent IS NOT NULL AND c.on_parent_failure = 'cancel'
                         THEN 'cancelled'
                         WHEN cs.open_shards = 0
                         THEN CASE WHEN c.queued_at IS NOT NULL THEN 'queued' ELSE 'pending' END
                         ELSE 'blocked' END,
           error_data = CASE WHEN cs.failed_parent IS NOT NULL AND c.on_parent_failure = 'cancel'
                             THEN jsonb_build_object(
                                      'type', 'ParentFailed',
                                      'message', format('Parent task %s ended %s',
                                                        cs.failed_parent, cs.failed_status),
                                      'parentTaskId', cs.failed_parent)
                             ELSE c.error_data END,
           completed_at = CASE WHEN cs.failed_parent IS NOT NULL
                                    AND c.on_parent_failure = 'cancel' THEN $4::bigint END,
           duration_ms = CASE WHEN cs.failed_parent IS NOT NULL
                                   AND c.on_parent_failure = 'cancel' THEN 0 END,
           updated_at = $4
      FROM cs
     WHERE c.org_id = $1 AND c.id = cs.child_id AND c.status = 'blocked'
    RETURNING c.id, c.run_id, c.org_id, c.status
), cc AS (
    INSERT INTO run_counter (run_id, shard, org_id, cancelled_tasks)
    SELECT run_id, $5::smallint, org_id, count(*) FROM ch WHERE status = 'cancelled'
     GROUP BY run_id, org_id
    ON CONFLICT (run_id, shard) DO UPDATE
       SET cancelled_tasks = run_counter.cancelled_tasks + EXCLUDED.cancelled_tasks
)
SELECT (SELECT child_id FROM bad) AS bad_child, (SELECT parent_id FROM bad) AS bad_parent,
       (SELECT array_agg(id) FROM ch WHERE status = 'queued') AS released_ids,
       (SELECT array_agg(id) FROM ch WHERE status = 'cancelled') AS cascade_ids,
       (SELECT array_agg(DISTINCT run_id) FROM ch WHERE status = 'cancelled') AS cascade_runs,
       (SELECT count(pg_notify('foreman_task_ready', $1))
          FROM (SELECT 1 FROM ch WHERE status = 'queued' LIMIT 1) q) AS notified

-- end_dependents --
-- The step after a parent's end (see the top of this file) for parents that another statement
-- ended: cancel_task, the legacy PATCH, the sweeper, a release of a cancel-asked task, a cascade
-- of cancelled children, and a finish that saw a child being added meanwhile (child_epoch).
-- Idempotent: an edge already flipped is not counted again. $1 org, $2 parent ids, $3 now,
-- $4 counter shard.
WITH ended AS (
    SELECT id, status
      FROM task
     WHERE org_id = $1 AND id = ANY($2::uuid[]) AND status IN ('completed', 'failed', 'cancelled')
), dd AS (
    UPDATE task_dependency e
       SET parent_done = true
      FROM ended
     WHERE e.org_id = $1 AND e.parent_id = ended.id AND NOT e.parent_done
    RETURNING e.child_id, e.shard, e.parent_id, ended.status AS parent_status
), lk AS (
    -- Counter rows locked in one global order before any is changed: two statements ending
    -- parents of the same children never wait for each other in a cycle.
    SELECT k.child_id, k.shard
      FROM dependency_counter k
     WHERE k.org_id = $1 AND (k.child_id, k.shard) IN (SELECT child_id, shard FROM dd)
     ORDER BY k.child_id, k.shard
       FOR UPDATE
), sc AS (
    UPDATE dependency_counter k
       SET open_parents = k.open_parents - x.n
      FROM (SELECT child_id, shard, count(*) AS n FROM dd GROUP BY child_id, shard) x
     WHERE k.org_id = $1 AND k.child_id = x.child_id AND k.shard = x.shard
       AND (SELECT count(*) FROM lk) >= 0
    RETURNING k.child_id, k.open_parents
), cz AS (
    SELECT dd.child_id,
           (array_agg(dd.parent_id) FILTER (WHERE dd.parent_status <> 'completed'))[1]
               AS failed_parent,
           (array_agg(dd.parent_status) FILTER (WHERE dd.parent_status <> 'completed'))[1]
               AS failed_status,
           (SELECT count(*) FROM sc WHERE sc.child_id = dd.child_id AND sc.open_parents = 0)
               AS zeroed
      FROM dd
     GROUP BY dd.child_id
), lc AS (
    -- The children likewise, in id order.
    SELECT id
      FROM task
     WHERE org_id = $1 AND id IN (SELECT child_id FROM cz) AND status = 'blocked'
     ORDER BY id
       FOR NO KEY UPDATE
), ch AS (
    UPDATE task c
       SET open_shards = c.open_shards - cz.zeroed,
           status = CASE WHEN cz.failed_parent IS NOT NULL AND c.on_parent_failure = 'cancel'
                         THEN 'cancelled'
                         WHEN c.open_shards - cz.zeroed = 0
                         THEN CASE WHEN c.queued_at IS NOT NULL THEN 'queued' ELSE 'pending' END
                         ELSE 'blocked' END,
           error_data = CASE WHEN cz.failed_parent IS NOT NULL AND c.on_parent_failure = 'cancel'
                             THEN jsonb_build_object(
                                      'type', 'ParentFailed',
                                      'message', format('Parent task %s ended %s',
                                                        cz.failed_parent, cz.failed_status),
                                      'parentTaskId', cz.failed_parent)
                             ELSE c.error_data END,
           completed_at = CASE WHEN cz.failed_parent IS NOT NULL
                                    AND c.on_parent_failure = 'cancel' THEN $3::bigint END,
           duration_ms = CASE WHEN cz.failed_parent IS NOT NULL
                                   AND c.on_parent_failure = 'cancel'
                              THEN $3::bigint - c.created_at END,
           updated_at = $3
      FROM cz
     WHERE c.org_id = $1 AND c.id = cz.child_id AND c.status = 'blocked'
       AND (SELECT count(*) FROM lc) >= 0
    RETURNING c.id, c.run_id, c.org_id, c.status
), cc AS (
    INSERT INTO run_counter (run_id, shard, org_id, cancelled_tasks)
    SELECT run_id, $4::smallint, org_id, count(*) FROM ch WHERE status = 'cancelled'
     GROUP BY run_id, org_id
    ON CONFLICT (run_id, shard) DO UPDATE
       SET cancelled_tasks = run_counter.cancelled_tasks + EXCLUDED.cancelled_tasks
)
SELECT (SELECT array_agg(id) FROM ch WHERE status = 'queued') AS released_ids,
       (SELECT array_agg(id) FROM ch WHERE status = 'cancelled') AS cascade_ids,
       (SELECT array_agg(DISTINCT run_id) FROM ch WHERE status = 'cancelled') AS cascade_runs,
       (SELECT count(pg_notify('foreman_task_ready', $1))
          FROM (SELECT 1 FROM ch WHERE status = 'queued' LIMIT 1) q) AS notified,
       (SELECT count(pg_notify('foreman_task_done', g.ids))
          FROM (SELECT string_agg(d.id::text, ',') AS ids
                  FROM (SELECT id, (row_number() OVER () - 1) / 100 AS n
                          FROM ch
                         WHERE status = 'cancelled') d
                 GROUP BY d.n) g) AS notified_done

-- list_parents --
-- A page of a task's parents (oldest edge order: by parent id, UUIDv7 = creation order), and the
-- total; found says whether the child exists. $1 org, $2 child id, $3 limit, $4 offset.
SELECT EXISTS (SELECT 1 FROM task WHERE org_id = $1 AND id = $2) AS found, n.total, p.*
  FROM (SELECT count(*) AS total FROM task_dependency WHERE org_id = $1 AND child_id = $2) n
  LEFT JOIN LATERAL (
      SELECT t.*
        FROM task_dependency e
        JOIN task_answer t ON t.org_id = $1 AND t.id = e.parent_id
       WHERE e.org_id = $1 AND e.child_id = $2
       ORDER BY e.parent_id
       LIMIT $3 OFFSET $4
  ) p ON true

-- get_tasks --
-- Tasks by id (released children to publish). $1 org, $2 ids.
SELECT * FROM task_answer WHERE org_id = $1 AND id = ANY($2::uuid[])
