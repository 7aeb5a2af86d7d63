-- Task dependencies (issue 13): `dependsOn` on a task, fan-out and fan-in.
--
-- task_dependency: one row per (parent, child) edge, both of one run. parent_done is flipped once,
-- by the statement that ends the parent (store/sql/queue.sql finish_tasks, store/sql/
-- dependencies.sql end_dependents): the row lock and the `NOT parent_done` re-check make each edge
-- count once whatever runs concurrently. No counter: a fan-in child's open parents are the edges
-- not done (the partial index task_dependency_open_idx holds only those), so 10,000 parents ending
-- at once write 10,000 different rows and never queue on one; the child's row changes once, when
-- it is released or cancelled. The statement that flips a child's last open edges releases it;
-- two statements flipping the last ones at the same moment cannot see each other's flips, so each
-- that leaves few open edges has them looked at again with a fresh snapshot right after its
-- commit (store/dependencies.py release_children).
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
ALTER TABLE task ADD COLUMN child_epoch bigint NOT NULL DEFAULT 0;

CREATE TABLE task_dependency (
    parent_id    uuid      NOT NULL,
    child_id     uuid      NOT NULL,
    org_id       text      NOT NULL,
    run_id       uuid      NOT NULL,
    parent_done  boolean   NOT NULL DEFAULT false,
    PRIMARY KEY (parent_id, child_id)
) WITH (fillfactor = 80);
CREATE INDEX task_dependency_child_idx ON task_dependency (child_id, parent_id);
CREATE INDEX task_dependency_open_idx ON task_dependency (child_id) WHERE NOT parent_done;

ALTER TABLE task_dependency ENABLE ROW LEVEL SECURITY;
CREATE POLICY task_dependency_org ON task_dependency
    USING (org_id = current_setting('app.current_org_id', true))
    WITH CHECK (org_id = current_setting('app.current_org_id', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON task_dependency TO foreman_app;
