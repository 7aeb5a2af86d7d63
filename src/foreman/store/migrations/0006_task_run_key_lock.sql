-- The task -> run foreign key ran a query and took a row lock on the run for every inserted task
-- (EXPLAIN ANALYZE of a 500-task batch: 9.8 ms of 29 ms in its trigger), and concurrent batches
-- into one run queued behind each other's per-row locks. The insert statements (store/sql/
-- tasks.sql) already look the run up; they now lock it FOR KEY SHARE once per statement, which
-- is what the constraint guaranteed: a run cannot be deleted while tasks are being added to it.
-- Whatever deletes runs deletes their tasks itself (no cascade any more).
ALTER TABLE task DROP CONSTRAINT task_run_id_fkey;
