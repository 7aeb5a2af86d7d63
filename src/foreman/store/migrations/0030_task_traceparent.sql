-- Traces (README "Traces"): the W3C traceparent of the request that created a task, so that the
-- worker runs its handler in a span whose parent is the enqueue (one trace from the client's
-- enqueue_task to the handler's end). NULL: the creator sent none (or an invalid one). Only the
-- claim statements read it back. Adding a column without a default rewrites nothing.
ALTER TABLE task ADD COLUMN traceparent text;
