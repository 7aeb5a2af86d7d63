-- Task dependencies (store/dependencies.py, migration 0015 explains the tables). Each statement is
-- whole: store/queries.py loads it by the name in its `-- name --` line.
--
-- The step that follows a parent's end, written out in finish_tasks (store/sql/queue.sql) and in
-- end_dependents below: flip each edge of the ended parents once (`dd`), look for open edges left
-- to each child besides the ones flipped here (`cz`: through the partial index of open edges, at
-- most 1001), and update each blocked child once (`ch`): 'cancelled' when a parent failed or was
-- cancelled and the child's onParentFailure is 'cancel' (errorData ParentFailed), else released
-- ('queued' if it was enqueued, else 'pending') when no open edge is left. `ch` updates only
-- blocked children, locked in id order and re-checked on the latest row: a child is released or
-- cancelled exactly once. Children cancelled here are counted on shard $n of their run (another
-- shard than the statement's own counter update, which an INSERT ... ON CONFLICT cannot touch
-- twice); their own children are ended by the caller with end_dependents (`cascade_ids`). A
-- statement cannot see the flips of another running at the same time: the children it leaves
-- with 1..1000 open edges (`recheck_children`) get release_children after its commit.

-- lock_parents --
-- The first statement of adding children (store/dependencies.py, in the children's transaction,
-- before their insert): bump each existing parent's child_epoch under its row lock, in id order.
-- Until the transaction ends no parent can end, and add_dependencies, a later statement, sees
-- each one's latest status.
-- A parent that is itself one of the new children is new: nobody else can end it. $1 org,
-- $2 child ids, $3 parent ids.
WITH l AS (
    SELECT id
      FROM task
     WHERE org_id = $1 AND id = ANY($3::uuid[]) AND NOT id = ANY($2::uuid[])
     ORDER BY id
       FOR NO KEY UPDATE
)
UPDATE task
   SET child_epoch = child_epoch + 1
 WHERE org_id = $1 AND id IN (SELECT id FROM l)

-- add_dependencies --
-- The edges of new children (inserted 'blocked' earlier in the same transaction) to their parents
-- (locked by lock_parents): existing tasks or earlier items of the batch, all of the child's run
-- (else `bad_*`: the caller rolls back). A parent that has ended counts as done (failed or
-- cancelled, it may cancel the child at once); a child with no open parent is released at once.
-- $1 org, $2 child ids, $3 parent ids (pairs), $4 now, $5 counter shard.
WITH e AS (
    SELECT DISTINCT child_id, parent_id
      FROM unnest($2::uuid[], $3::uuid[]) AS e(child_id, parent_id)
), ep AS (
    SELECT e.child_id, e.parent_id, p.id AS found_id, p.status AS parent_status,
           p.run_id = c.run_id AS same_run
      FROM e
      JOIN task c ON c.org_id = $1 AND c.id = e.child_id
      LEFT JOIN task p ON p.org_id = $1 AND p.id = e.parent_id
), bad AS (
    SELECT child_id, parent_id FROM ep WHERE found_id IS NULL OR NOT same_run LIMIT 1
), ins AS (
    INSERT INTO task_dependency (parent_id, child_id, org_id, run_id, parent_done)
    SELECT ep.parent_id, ep.child_id, $1, c.run_id,
           ep.parent_status IN ('completed', 'failed', 'cancelled')
      FROM ep
      JOIN task c ON c.org_id = $1 AND c.id = ep.child_id
     WHERE NOT EXISTS (SELECT 1 FROM bad)
    RETURNING child_id, parent_id, parent_done
), cs AS (
    SELECT ep.child_id,
           count(*) FILTER (WHERE ep.parent_status NOT IN ('completed', 'failed', 'cancelled'))
               AS open_parents,
           (array_agg(ep.parent_id ORDER BY ep.parent_id)
               FILTER (WHERE ep.parent_status IN ('failed', 'cancelled')))[1] AS failed_parent,
           (array_agg(ep.parent_status ORDER BY ep.parent_id)
               FILTER (WHERE ep.parent_status IN ('failed', 'cancelled')))[1] AS failed_status
      FROM ep
     WHERE NOT EXISTS (SELECT 1 FROM bad) AND (SELECT count(*) FROM ins) >= 0
     GROUP BY ep.child_id
), ch AS (
    UPDATE task c
       SET status = CASE WHEN cs.failed_parent IS NOT NULL AND c.on_parent_failure = 'cancel'
                         THEN 'cancelled'
                         WHEN cs.open_parents = 0
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
     WHERE e.org_id = $1 AND e.parent_id = ANY($2::uuid[]) AND e.parent_id = ended.id
       AND NOT e.parent_done
    RETURNING e.child_id, e.parent_id, ended.status AS parent_status
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
                                    AND c.on_parent_failure = 'cancel' THEN $3::bigint END,
           duration_ms = CASE WHEN cz.failed_parent IS NOT NULL
                                   AND c.on_parent_failure = 'cancel'
                              THEN $3::bigint - c.created_at END,
           updated_at = $3::bigint
      FROM cz
     WHERE c.org_id = $1 AND c.id = cz.child_id AND c.status = 'blocked'
       AND ((cz.failed_parent IS NOT NULL AND c.on_parent_failure = 'cancel') OR cz.open_left = 0)
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
       (SELECT array_agg(child_id) FROM cz WHERE open_left BETWEEN 1 AND 1000) AS recheck_children,
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

-- release_children --
-- Blocked children with no open edge left, seen with this statement's fresh snapshot (the last
-- flips of two concurrent statements), released once (locked in id order, re-checked blocked).
-- $1 org, $2 child ids, $3 now.
WITH c AS (
    SELECT t.id
      FROM task t
     WHERE t.org_id = $1 AND t.id = ANY($2::uuid[]) AND t.status = 'blocked'
       AND NOT EXISTS (SELECT 1
                         FROM task_dependency o
                        WHERE o.org_id = $1 AND o.child_id = t.id AND NOT o.parent_done)
     ORDER BY t.id
       FOR NO KEY UPDATE
), r AS (
    UPDATE task
       SET status = CASE WHEN queued_at IS NOT NULL THEN 'queued' ELSE 'pending' END,
           updated_at = $3
     WHERE org_id = $1 AND id IN (SELECT id FROM c) AND status = 'blocked'
    RETURNING id, status
)
SELECT (SELECT array_agg(id) FROM r WHERE status = 'queued') AS released_ids,
       (SELECT count(pg_notify('foreman_task_ready', $1))
          FROM (SELECT 1 FROM r WHERE status = 'queued' LIMIT 1) q) AS notified
