-- The queue figures of /metrics (store/metrics.py), across organisations: run by the table owner
-- (RLS does not bind it). Each reads at most $2 rows, so a scrape costs the same with a million
-- tasks waiting; a count that reaches the bound means "at least that many".

-- ready_tasks --
-- Ready tasks (queued or retrying whose run_after has come) per organisation and type, and when
-- the oldest of them became ready (the later of being queued and its run_after). The partial
-- index task_ready_idx holds exactly the queued and retrying tasks. $1 now, $2 bound.
SELECT org_id, type, count(*) AS tasks, min(ready_at) AS oldest
  FROM (SELECT org_id, type, greatest(coalesce(queued_at, created_at), run_after) AS ready_at
          FROM task
         WHERE status IN ('queued', 'retrying') AND run_after <= $1
         LIMIT $2) r
 GROUP BY org_id, type

-- running_tasks --
-- Tasks held under a lease per organisation and type (from task_lease_idx). $1 bound.
SELECT org_id, type, count(*) AS tasks
  FROM (SELECT org_id, type FROM task WHERE status = 'running' LIMIT $1) r
 GROUP BY org_id, type
