-- Task dependencies (store/dependencies.py, migration 0015 explains the tables). Each statement is
-- whole: store/queries.py loads it by the name in its `-- name --` line.
--
-- The step that follows a parent's end is one SQL function, end_dependents() (migration 0021
-- explains it), which every statement ending tasks calls in its select list (store/sql/queue.sql,
-- cancel.sql, the PATCH of store/tasks.py): the children are released or cancelled, transitively,
-- in the parents' transaction. add_dependencies below decides a new child from its parents'
-- status as they are when it is added.

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
-- The step after a parent's end (migration 0021) as a statement of its own: for children cancelled
-- as they were added (add_dependencies) and the sweeper's repair. Idempotent: an edge already flipped is not counted again. $1 parent ids, $2 now,
-- $3 counter shard.
SELECT released AS released_ids, recheck AS recheck_children, NULL::uuid[] AS runs_ended,
       cancelled_runs AS runs_cancelled
  FROM end_dependents($1::uuid[], $2, $3::smallint)

-- stranded_parents --
-- The sweeper's belt and braces, across organisations: ended parents with an edge not flipped to
-- a blocked child (a step cut short before migration 0021 made it one transaction), and blocked
-- children with no open edge left (a release_children that never ran).
-- $1 limit.
-- Blocked tasks are few and indexed (task_blocked_idx, migration 0021); UNION ALL, so the LIMIT
-- stops the scan (a parent named twice is harmless). $1 limit.
SELECT p.id AS parent_id, NULL::uuid AS child_id
  FROM task c
  JOIN task_dependency e ON e.child_id = c.id AND NOT e.parent_done
  JOIN task p ON p.id = e.parent_id AND p.org_id = e.org_id
 WHERE c.status = 'blocked' AND p.status IN ('completed', 'failed', 'cancelled')
UNION ALL
SELECT NULL::uuid, c.id
  FROM task c
 WHERE c.status = 'blocked'
   AND NOT EXISTS (SELECT 1 FROM task_dependency o WHERE o.child_id = c.id AND NOT o.parent_done)
 LIMIT $1

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
-- Tasks by id (released children to publish). $1 org (NULL: any, for the sweeper), $2 ids.
SELECT * FROM task_answer WHERE ($1::text IS NULL OR org_id = $1) AND id = ANY($2::uuid[])

-- release_children --
-- Blocked children with no open edge left, seen with this statement's fresh snapshot (the last
-- flips of two concurrent statements), released once (locked in id order, re-checked blocked).
-- RLS keeps the app role to its organisation; the sweeper (the owner) releases across them.
-- $1 child ids, $2 now.
WITH c AS (
    SELECT t.id
      FROM task t
     WHERE t.id = ANY($1::uuid[]) AND t.status = 'blocked'
       AND NOT EXISTS (SELECT 1
                         FROM task_dependency o
                        WHERE o.child_id = t.id AND NOT o.parent_done)
     ORDER BY t.id
       FOR NO KEY UPDATE
), r AS (
    UPDATE task
       SET status = CASE WHEN queued_at IS NOT NULL THEN 'queued' ELSE 'pending' END,
           updated_at = $2
     WHERE id IN (SELECT id FROM c) AND status = 'blocked'
    RETURNING id, org_id, status
)
SELECT (SELECT array_agg(id) FROM r WHERE status = 'queued') AS released_ids,
       (SELECT count(pg_notify('foreman_task_ready', o.org_id))
          FROM (SELECT DISTINCT org_id FROM r WHERE status = 'queued') o) AS notified
