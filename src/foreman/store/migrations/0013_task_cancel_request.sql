-- Cancellation that reaches workers (issue 13, POST /api/v1/tasks/:id/cancel and /runs/:id/cancel):
-- a running task cannot stop at once, so the cancel marks it. Its worker's next heartbeat answers
-- `cancelled: true`, and the task ends `cancelled` when the worker reports (whatever the handler
-- returned) or when its lease ends (store/sql/queue.sql). NULL: no cancel asked. Adding a column
-- without a default rewrites nothing.
ALTER TABLE task ADD COLUMN cancel_requested_at bigint;
