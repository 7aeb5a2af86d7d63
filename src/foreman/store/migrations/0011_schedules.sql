-- Schedules (issue 13, item 6): each firing creates a run with one queued task.
-- A schedule has exactly one trigger, a 5-field cron expression (in its IANA timezone) or an
-- interval; next_run_at is the next tick (epoch ms), NULL while the schedule is disabled (or its
-- cron expression has no future tick). The task to create is kept as the document the API shows:
-- {"type", "inputData", "maxRetries", "priority"} (models.ScheduleTask).
CREATE TABLE schedule (
    id              uuid     PRIMARY KEY,
    org_id          text     NOT NULL,
    name            text     NOT NULL,
    cron            text,
    interval_ms     bigint   CHECK (interval_ms >= 1000),
    timezone        text     NOT NULL DEFAULT 'UTC',
    enabled         boolean  NOT NULL DEFAULT true,
    run_input_data  jsonb    NOT NULL,
    task            jsonb    NOT NULL,
    next_run_at     bigint,
    last_run_at     bigint,
    last_run_id     uuid,
    created_at      bigint   NOT NULL,
    updated_at      bigint   NOT NULL,
    CHECK ((cron IS NULL) <> (interval_ms IS NULL))
);

CREATE INDEX schedule_org_created_idx ON schedule (org_id, created_at, id);
-- The firing loop's scan for due schedules (server/scheduler.py), across organisations.
CREATE INDEX schedule_due_idx ON schedule (next_run_at) WHERE enabled;

-- Row-level security as on every table (0001): the request role sees its organisation's rows
-- only; the firing loop connects as the owner, which the policy does not bind (not FORCEd).
ALTER TABLE schedule ENABLE ROW LEVEL SECURITY;
CREATE POLICY schedule_org ON schedule
    USING (org_id = current_setting('app.current_org_id', true))
    WITH CHECK (org_id = current_setting('app.current_org_id', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON schedule TO foreman_app;
