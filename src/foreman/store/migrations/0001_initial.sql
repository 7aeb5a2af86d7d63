-- Foreman schema v1: runs, tasks, run data, sharded run counters, row-level security.
-- Timestamps are epoch milliseconds (bigint), JSON is jsonb, tags are text[] (SPEC section 6).

-- The server runs its request queries as this role. It owns nothing and has no BYPASSRLS, so the
-- policies below apply to it even when the login user is a superuser (SPEC section 3).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'foreman_app') THEN
        CREATE ROLE foreman_app NOLOGIN NOBYPASSRLS;
    END IF;
END
$$;

GRANT foreman_app TO CURRENT_USER;

CREATE TABLE run (
    id            uuid        PRIMARY KEY,
    org_id        text        NOT NULL,
    status        text        NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    input_data    jsonb       NOT NULL,
    output_data   jsonb,
    error_data    jsonb,
    metadata      jsonb,
    created_at    bigint      NOT NULL,
    updated_at    bigint      NOT NULL,
    started_at    bigint,
    completed_at  bigint,
    duration_ms   bigint
);

CREATE INDEX run_org_created_idx   ON run (org_id, created_at, id);
CREATE INDEX run_org_started_idx   ON run (org_id, started_at, id);
CREATE INDEX run_org_completed_idx ON run (org_id, completed_at, id);
CREATE INDEX run_org_status_idx    ON run (org_id, status, created_at, id);

-- Task counters of a run, split over shards so that a busy run does not serialise on one row.
-- A run's counter is the sum over its shards; each change is made in the statement that changes the task.
CREATE TABLE run_counter (
    run_id           uuid      NOT NULL REFERENCES run (id) ON DELETE CASCADE,
    shard            smallint  NOT NULL,
    org_id           text      NOT NULL,
    total_tasks      bigint    NOT NULL DEFAULT 0,
    completed_tasks  bigint    NOT NULL DEFAULT 0,
    failed_tasks     bigint    NOT NULL DEFAULT 0,
    cancelled_tasks  bigint    NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, shard)
) WITH (fillfactor = 50);

CREATE TABLE task (
    id                uuid     PRIMARY KEY,
    run_id            uuid     NOT NULL REFERENCES run (id) ON DELETE CASCADE,
    parent_task_id    uuid     REFERENCES task (id) ON DELETE CASCADE,
    org_id            text     NOT NULL,
    type              text     NOT NULL,
    status            text     NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'queued', 'running', 'completed', 'failed',
                                        'cancelled', 'retrying')),
    input_data        jsonb    NOT NULL,
    output_data       jsonb,
    error_data        jsonb,
    metadata          jsonb,
    retry_count       integer  NOT NULL DEFAULT 0,
    max_retries       integer  NOT NULL DEFAULT 3,
    priority          integer  NOT NULL DEFAULT 0,
    run_after         bigint   NOT NULL DEFAULT 0,
    attempt           integer  NOT NULL DEFAULT 0,
    lease_token       uuid,
    lease_expires_at  bigint,
    worker_id         text,
    idempotency_key   text,
    queue_job_id      text,
    created_at        bigint   NOT NULL,
    updated_at        bigint   NOT NULL,
    queued_at         bigint,
    started_at        bigint,
    completed_at      bigint,
    duration_ms       bigint
) WITH (fillfactor = 70);

CREATE INDEX task_org_created_idx   ON task (org_id, created_at, id);
CREATE INDEX task_run_created_idx   ON task (run_id, created_at, id);
CREATE INDEX task_run_status_idx    ON task (run_id, status, created_at, id);
CREATE INDEX task_org_status_idx    ON task (org_id, status, created_at, id);
CREATE INDEX task_org_type_idx      ON task (org_id, type, created_at, id);
CREATE INDEX task_parent_idx        ON task (parent_task_id) WHERE parent_task_id IS NOT NULL;
CREATE UNIQUE INDEX task_idempotency_idx ON task (org_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The queue: ready tasks in claim order (BullMQ order: priority 0 first, then 1 = highest).
CREATE INDEX task_ready_idx ON task (org_id, priority, run_after, id)
    WHERE status IN ('queued', 'retrying');
-- The sweeper's scan for expired leases.
CREATE INDEX task_lease_idx ON task (lease_expires_at) WHERE status = 'running';

CREATE TABLE run_data (
    id          uuid     PRIMARY KEY,
    run_id      uuid     NOT NULL REFERENCES run (id) ON DELETE CASCADE,
    task_id     uuid     NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    org_id      text     NOT NULL,
    key         text     NOT NULL,
    value       jsonb    NOT NULL,
    tags        text[]   NOT NULL DEFAULT '{}',
    metadata    jsonb,
    created_at  bigint   NOT NULL,
    updated_at  bigint   NOT NULL
);

CREATE INDEX run_data_run_key_idx     ON run_data (run_id, key text_pattern_ops, created_at, id);
CREATE INDEX run_data_run_created_idx ON run_data (run_id, created_at, id);
CREATE INDEX run_data_task_idx        ON run_data (task_id);
CREATE INDEX run_data_tags_idx        ON run_data USING gin (tags);

-- Row-level security: a query that forgets its org filter still sees only the current org.
ALTER TABLE run         ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_counter ENABLE ROW LEVEL SECURITY;
ALTER TABLE task        ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_data    ENABLE ROW LEVEL SECURITY;

CREATE POLICY run_org ON run
    USING (org_id = current_setting('app.current_org_id', true))
    WITH CHECK (org_id = current_setting('app.current_org_id', true));
CREATE POLICY run_counter_org ON run_counter
    USING (org_id = current_setting('app.current_org_id', true))
    WITH CHECK (org_id = current_setting('app.current_org_id', true));
CREATE POLICY task_org ON task
    USING (org_id = current_setting('app.current_org_id', true))
    WITH CHECK (org_id = current_setting('app.current_org_id', true));
CREATE POLICY run_data_org ON run_data
    USING (org_id = current_setting('app.current_org_id', true))
    WITH CHECK (org_id = current_setting('app.current_org_id', true));

GRANT SELECT, INSERT, UPDATE, DELETE ON run, run_counter, task, run_data TO foreman_app;
