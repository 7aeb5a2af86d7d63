-- A run's task counters: the sums over its shards in run_counter (0001). One definition for every
-- statement that answers a run (store/sql/runs.sql, store/runs.py): `CROSS JOIN LATERAL
-- run_task_counts(r.id) c`. A single-SELECT SQL function is inlined by the planner, so the plan is
-- the one the subquery written out had; it runs with the caller's rights, under row-level security.
CREATE FUNCTION run_task_counts(run uuid)
RETURNS TABLE (total_tasks bigint, completed_tasks bigint, failed_tasks bigint,
               cancelled_tasks bigint)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT coalesce(sum(total_tasks), 0)::bigint,
           coalesce(sum(completed_tasks), 0)::bigint,
           coalesce(sum(failed_tasks), 0)::bigint,
           coalesce(sum(cancelled_tasks), 0)::bigint
      FROM run_counter
     WHERE run_id = run
$$;
GRANT EXECUTE ON FUNCTION run_task_counts(uuid) TO foreman_app;
