-- Every attempt of a task (issue 13, GET /api/v1/tasks/:id/attempts): one row per claim (or
-- legacy PATCH to running), closed with its outcome by the statement that ends the attempt. Each
-- row is written by the statement that makes the transition (store/sql/queue.sql, store/tasks.py),
-- set-based from that statement's changed rows: no extra round trip per task.
--
-- No foreign key to task: a foreign key's per-row trigger is what migration 0006 took off the hot
-- path. The task's statements are the only writers, and whatever deletes tasks deletes these.
-- No primary key either: a released attempt is given back with its number (release_tasks undoes
-- the count), so the next claim records the same number again; a task has at most one row with
-- outcome 'running', the one its statements close.
CREATE TABLE task_attempt (
    task_id      uuid     NOT NULL,
    attempt      integer  NOT NULL,
    org_id       text     NOT NULL,
    run_id       uuid     NOT NULL,
    worker_id    text,
    started_at   bigint   NOT NULL,
    ended_at     bigint,
    duration_ms  bigint,
    outcome      text     NOT NULL DEFAULT 'running'
                 CHECK (outcome IN ('running', 'completed', 'failed', 'lease_expired', 'released',
                                    'cancelled')),
    error_data   jsonb
) WITH (fillfactor = 80);

CREATE INDEX task_attempt_task_idx ON task_attempt (task_id, started_at, attempt);

ALTER TABLE task_attempt ENABLE ROW LEVEL SECURITY;
CREATE POLICY task_attempt_org ON task_attempt
    USING (org_id = current_setting('app.current_org_id', true))
    WITH CHECK (org_id = current_setting('app.current_org_id', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON task_attempt TO foreman_app;
