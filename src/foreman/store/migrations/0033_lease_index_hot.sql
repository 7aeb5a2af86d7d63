-- Heartbeats become HOT updates (issue 17). A heartbeat changes only lease_expires_at, and
-- task_lease_idx had it as its key, so every heartbeat wrote a new entry into each of the task
-- table's indexes (PostgreSQL updates in place, "HOT", only when no indexed column changes).
-- The running tasks are found instead through a partial index keyed on a column a running task
-- never changes: the sweeper (store/sql/queue.sql expire_leases) reads the running tasks from it
-- and sorts them by lease (they are the tasks in flight: a few per worker slot), and the
-- dashboard's running counts and lease holders (store/sql/ui.sql) read one organisation's.
CREATE INDEX task_running_idx ON task (org_id) WHERE status = 'running';
DROP INDEX task_lease_idx;
