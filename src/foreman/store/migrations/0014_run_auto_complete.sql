-- Runs that finish themselves (issue 13, `autoComplete: true` on POST /api/v1/runs): such a run
-- becomes 'running' at its first claim, and 'completed' (no task failed) or 'failed' once every
-- task is terminal, by the exact counters (run_task_counts(), migration 0009).
--
-- task_epoch: bumped by every statement that adds tasks to an auto-complete run (store/sql/
-- tasks.sql). A completion compares the epoch it read with the row's after taking the row lock:
-- a task added meanwhile (committed or not) changed it, so the run is not completed under it, and
-- a task added after the completion sees completed_at and is refused (409). Adding a column with
-- a constant default rewrites nothing.
ALTER TABLE run ADD COLUMN auto_complete boolean NOT NULL DEFAULT false;
ALTER TABLE run ADD COLUMN task_epoch bigint NOT NULL DEFAULT 0;
-- The sweeper's look for auto-complete runs whose completion a race left to it.
CREATE INDEX run_auto_open_idx ON run (created_at, id) WHERE auto_complete AND completed_at IS NULL;
