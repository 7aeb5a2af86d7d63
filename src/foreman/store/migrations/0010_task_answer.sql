-- A task as the API answers it (models.Task), for the statements that read tasks from the table:
-- run_after only when it lies after created_at (a delayed task), the lease token never (only its
-- claimer sees it, from the claim statements). A plain view over one table is inlined by the
-- planner (the same index scans as the query written out); security_invoker keeps the task
-- table's row-level security in force for the caller.
CREATE VIEW task_answer WITH (security_invoker = true) AS
SELECT t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id
  FROM task t;
GRANT SELECT ON task_answer TO foreman_app;
