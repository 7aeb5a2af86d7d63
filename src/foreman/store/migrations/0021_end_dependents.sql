-- The step after tasks end (issue 13), in ONE place: every statement that ends tasks (store/sql/
-- queue.sql finish_tasks, release_tasks, expire_leases; cancel.sql; the PATCH of store/tasks.py)
-- calls end_dependents() in its select list with the ended tasks that have children, so their
-- blocked children are released or cancelled in the same transaction as the parents' end.
--
-- Called from a statement's select list, with arguments read from the statement's UPDATE, the
-- function runs after that UPDATE: it is VOLATILE, so each of its statements takes a fresh
-- snapshot that shows the caller's changes (and every commit so far, such as the edges of a child
-- added while the parent was locked). Its counter rows go to `shard`, which the caller keeps
-- distinct from the shard of its own counter INSERT (a row may change once per statement).
--
-- Per round: flip each ended parent's edges once (`NOT parent_done`, re-checked on the latest
-- row), then update each blocked child once, locked in id order: 'cancelled' (errorData
-- ParentFailed) when a parent flipped here failed or was cancelled and the child's
-- onParentFailure is 'cancel'; else released ('queued' if it was enqueued, else 'pending') when
-- no open edge is left (through the partial index of open edges). The cancelled children are the
-- next round's parents: the whole cascade is one transaction, so a server's death cannot leave a
-- grandchild blocked under a cancelled child. Two transactions flipping a child's last edges at
-- the same moment cannot see each other's flips: the children left with 1..1000 open edges are
-- answered (`recheck`) for release_children after the commit, and the sweeper repairs any left.
CREATE FUNCTION end_dependents(parents uuid[], now bigint, shard smallint,
                               OUT released uuid[], OUT cancelled uuid[],
                               OUT cancelled_runs uuid[], OUT recheck uuid[])
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    ended uuid[] := parents;
    children uuid[];
    failed_parents uuid[];
    failed_statuses text[];
    opens bigint[];
    round_cancelled uuid[];
BEGIN
    released := '{}';
    cancelled := '{}';
    recheck := '{}';
    IF coalesce(cardinality(parents), 0) = 0 THEN
        RETURN;
    END IF;
    WHILE cardinality(ended) > 0 LOOP
        WITH dd AS (
            UPDATE task_dependency e
               SET parent_done = true
              FROM task p
             WHERE e.parent_id = ANY(ended) AND NOT e.parent_done
               AND p.id = e.parent_id AND p.org_id = e.org_id
               AND p.status IN ('completed', 'failed', 'cancelled')
            RETURNING e.child_id, e.parent_id, p.status AS parent_status
        ), cf AS (
            SELECT d.child_id, array_agg(d.parent_id) AS flipped,
                   (array_agg(d.parent_id ORDER BY d.parent_id)
                        FILTER (WHERE d.parent_status <> 'completed'))[1] AS failed_parent,
                   (array_agg(d.parent_status ORDER BY d.parent_id)
                        FILTER (WHERE d.parent_status <> 'completed'))[1] AS failed_status
              FROM dd d
             GROUP BY d.child_id
        ), cz AS (
            -- Open edges left besides this round's flips (not in this statement's snapshot),
            -- counted up to 1001 through the partial index of open edges.
            SELECT cf.*,
                   (SELECT count(*)
                      FROM (SELECT 1
                              FROM task_dependency o
                             WHERE o.child_id = cf.child_id AND NOT o.parent_done
                               AND NOT o.parent_id = ANY(cf.flipped)
                             LIMIT 1001) x) AS open_left
              FROM cf
        )
        SELECT array_agg(child_id ORDER BY child_id),
               array_agg(failed_parent ORDER BY child_id),
               array_agg(failed_status ORDER BY child_id),
               array_agg(open_left ORDER BY child_id),
               recheck || coalesce(array_agg(child_id) FILTER (WHERE open_left BETWEEN 1 AND 1000),
                                   '{}')
          INTO children, failed_parents, failed_statuses, opens, recheck
          FROM cz;
        EXIT WHEN children IS NULL;

        WITH f AS (
            SELECT *
              FROM unnest(children, failed_parents, failed_statuses, opens)
                   AS f(child_id, failed_parent, failed_status, open_left)
        ), lc AS (
            -- The children to change, locked in id order: two transactions never wait in a cycle.
            SELECT c.id
              FROM task c
              JOIN f ON f.child_id = c.id
             WHERE c.status = 'blocked'
               AND ((f.failed_parent IS NOT NULL AND c.on_parent_failure = 'cancel')
                    OR f.open_left = 0)
             ORDER BY c.id
               FOR NO KEY UPDATE OF c
        ), ch AS (
            UPDATE task c
               SET status = CASE WHEN f.failed_parent IS NOT NULL AND c.on_parent_failure = 'cancel'
                                 THEN 'cancelled'
                                 WHEN c.queued_at IS NOT NULL THEN 'queued'
                                 ELSE 'pending' END,
                   error_data = CASE WHEN f.failed_parent IS NOT NULL
                                          AND c.on_parent_failure = 'cancel'
                                     THEN jsonb_build_object(
                                              'type', 'ParentFailed',
                                              'message', format('Parent task %s ended %s',
                                                                f.failed_parent, f.failed_status),
                                              'parentTaskId', f.failed_parent)
                                     ELSE c.error_data END,
                   completed_at = CASE WHEN f.failed_parent IS NOT NULL
                                            AND c.on_parent_failure = 'cancel' THEN now END,
                   duration_ms = CASE WHEN f.failed_parent IS NOT NULL
                                           AND c.on_parent_failure = 'cancel'
                                      THEN now - c.created_at END,
                   updated_at = now
              FROM f
             WHERE c.id = f.child_id AND c.id IN (SELECT id FROM lc) AND c.status = 'blocked'
            RETURNING c.id, c.status
        )
        SELECT released || coalesce(array_agg(id) FILTER (WHERE status = 'queued'), '{}'),
               coalesce(array_agg(id) FILTER (WHERE status = 'cancelled'), '{}')
          INTO released, round_cancelled
          FROM ch;

        cancelled := cancelled || round_cancelled;
        ended := round_cancelled;
    END LOOP;

    -- The cancelled children, counted on their runs (after every child's lock: a statement takes
    -- parents, then children, then counter rows), and the notifications of the ended and the
    -- released tasks (a payload holds at most 8000 bytes: 100 ids each).
    IF cardinality(cancelled) > 0 THEN
        WITH n AS (
            INSERT INTO run_counter (run_id, shard, org_id, cancelled_tasks)
            SELECT run_id, end_dependents.shard, org_id, count(*)
              FROM task
             WHERE id = ANY(cancelled)
             GROUP BY run_id, org_id
            ON CONFLICT (run_id, shard) DO UPDATE
               SET cancelled_tasks = run_counter.cancelled_tasks + EXCLUDED.cancelled_tasks
            RETURNING run_id
        )
        SELECT array_agg(run_id) INTO cancelled_runs FROM n;
        PERFORM pg_notify('foreman_task_done', g.ids)
           FROM (SELECT string_agg(d.id::text, ',') AS ids
                   FROM (SELECT id, (row_number() OVER () - 1) / 100 AS n
                           FROM unnest(cancelled) AS id) d
                  GROUP BY d.n) g;
    END IF;
    IF cardinality(released) > 0 THEN
        PERFORM pg_notify('foreman_task_ready', o.org_id)
           FROM (SELECT DISTINCT org_id FROM task WHERE id = ANY(released)) o;
    END IF;
END
$$;
GRANT EXECUTE ON FUNCTION end_dependents(uuid[], bigint, smallint) TO foreman_app;

-- The sweeper's repair of blocked tasks whose parents have all ended (store/sql/dependencies.sql
-- stranded_parents) reads blocked tasks only: few, and this index holds nothing else.
CREATE INDEX task_blocked_idx ON task (id) WHERE status = 'blocked';

-- The completion of auto-complete runs (migration 0014) in one place: store/sql/runs.sql
-- complete_runs (after a statement that ended tasks, with a fresh snapshot) and complete_due_runs
-- (the sweeper's catch-all). A run is completed once every task is terminal by the exact
-- counters: 'failed' if any task failed, else 'completed'. The UPDATE compares task_epoch with
-- the value read (a task added meanwhile bumped it) and re-checks completed_at after the row lock
-- (exactly once). With the caller's rights: under row-level security for the app role.
CREATE FUNCTION complete_runs(runs uuid[], now bigint) RETURNS SETOF uuid
LANGUAGE sql VOLATILE
AS $$
    WITH k AS (
        SELECT r.id, r.task_epoch, x.*
          FROM run r
         CROSS JOIN LATERAL run_task_counts(r.id) x
         WHERE r.id = ANY(runs) AND r.auto_complete AND r.completed_at IS NULL
    )
    UPDATE run r
       SET status = CASE WHEN k.failed_tasks > 0 THEN 'failed' ELSE 'completed' END,
           completed_at = now, duration_ms = now - coalesce(r.started_at, r.created_at),
           updated_at = now
      FROM k
     WHERE r.id = k.id AND r.task_epoch = k.task_epoch AND r.completed_at IS NULL
       AND k.total_tasks > 0
       AND k.total_tasks = k.completed_tasks + k.failed_tasks + k.cancelled_tasks
    RETURNING r.id
$$;
GRANT EXECUTE ON FUNCTION complete_runs(uuid[], bigint) TO foreman_app;
