-- Task dependencies (issue 13): `dependsOn` on a task, fan-out and fan-in.
--
-- task_dependency: one row per (parent, child) edge, both of one run. parent_done is flipped once,
-- by the statement that ends the parent (store/sql/queue.sql finish_tasks, store/sql/
-- dependencies.sql end_dependents): the row lock and the `NOT parent_done` re-check make each edge
-- count once whatever runs concurrently.
--
-- A fan-in child counts its open parents in dependency_counter, split over up to 16 shards (an
-- edge's shard comes from its parent id), so 10,000 parents ending at once do not queue on one
-- row: a statement decrements only the shards of the parents it ended, and reads the result on
-- the latest row (UPDATE ... RETURNING after the row lock). The one that brings a shard to zero
-- decrements the child's open_shards (at most 16 updates of the child row in all); the one that
-- brings that to zero releases the child, in the same statement. No sum over a snapshot: two
-- parents ending in two concurrent statements cannot both miss the release.
--
-- child_epoch: bumped on each existing parent by the statement that adds a child to it (under the
-- parent's row lock). A parent ending at the same moment either committed first (the child sees it
-- ended) or waited for the child's transaction, and then its statement sees the epoch it read
-- differ from the row's: it looks at the new edges again with a fresh snapshot.
ALTER TABLE task DROP CONSTRAINT task_status_check;
ALTER TABLE task ADD CONSTRAINT task_status_check
    CHECK (status IN ('pending', 'queued', 'running', 'completed', 'failed', 'cancelled',
                      'retrying', 'blocked')) NOT VALID;
ALTER TABLE task VALIDATE CONSTRAINT task_status_check;

ALTER TABLE task ADD COLUMN on_parent_failure text
    CHECK (on_parent_failure IN ('cancel', 'run'));
ALTER TABLE task ADD COLUMN open_shards smallint;
ALTER TABLE task ADD COLUMN child_epoch bigint NOT NULL DEFAULT 0;

CREATE TABLE task_dependency (
    parent_id    uuid      NOT NULL,
    child_id     uuid      NOT NULL,
    org_id       text      NOT NULL,
    run_id       uuid      NOT NULL,
    shard        smallint  NOT NULL,
    parent_done  boolean   NOT NULL DEFAULT false,
    PRIMARY KEY (parent_id, child_id)
) WITH (fillfactor = 80);
CREATE INDEX task_dependency_child_idx ON task_dependency (child_id, parent_id);

CREATE TABLE dependency_counter (
    child_id      uuid      NOT NULL,
    shard         smallint  NOT NULL,
    org_id        text      NOT NULL,
    open_parents  integer   NOT NULL,
    PRIMARY KEY (child_id, shard)
) WITH (fillfactor = 50);

ALTER TABLE task_dependency    ENABLE ROW LEVEL SECURITY;
ALTER TABLE dependency_counter ENABLE ROW LEVEL SECURITY;
CREATE POLICY task_dependency_org ON task_dependency
    USING (org_id = current_setting('app.current_org_id', true))
    WITH CHECK (org_id = current_setting('app.current_org_id', true));
CREATE POLICY dependency_counter_org ON dependency_counter
    USING (org_id = current_setting('app.current_org_id', true))
    WITH CHECK (org_id = current_setting('app.current_org_id', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON task_dependency, dependency_counter TO foreman_app;
