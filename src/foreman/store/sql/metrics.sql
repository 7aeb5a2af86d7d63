-- The queue figures of /metrics (store/metrics.py), across organisations: run by the table owner
-- (RLS does not bind it). Each status is read from at most $2 rows, so a scrape costs the same
-- with a million tasks waiting; a count that reaches the bound means "at least that many".

-- queue_depth --
-- Per organisation and type, in one statement (one round trip per scrape):
-- ready tasks (queued or retrying whose run_after has come) and when the oldest of them became
-- ready (the later of being queued and its run_after; the partial index task_ready_idx holds
-- exactly the queued and retrying tasks); running tasks (held under a lease, task_lease_idx);
-- blocked tasks (waiting for their parents, task_blocked_idx). $1 now, $2 bound.
WITH ready AS (
    SELECT org_id, type, count(*) AS tasks, min(ready_at) AS oldest
      FROM (SELECT org_id, type, greatest(coalesce(queued_at, created_at), run_after) AS ready_at
              FROM task
             WHERE status IN ('queued', 'retrying') AND run_after <= $1
             LIMIT $2) r
     GROUP BY org_id, type
), running AS (
    SELECT org_id, type, count(*) AS tasks
      FROM (SELECT org_id, type FROM task WHERE status = 'running' LIMIT $2) r
     GROUP BY org_id, type
), blocked AS (
    SELECT org_id, type, count(*) AS tasks
      FROM (SELECT org_id, type FROM task WHERE status = 'blocked' LIMIT $2) r
     GROUP BY org_id, type
)
SELECT org_id, type, coalesce(a.tasks, 0) AS ready, a.oldest,
       coalesce(b.tasks, 0) AS running, coalesce(c.tasks, 0) AS blocked
  FROM ready a
  FULL JOIN running b USING (org_id, type)
  FULL JOIN blocked c USING (org_id, type)
