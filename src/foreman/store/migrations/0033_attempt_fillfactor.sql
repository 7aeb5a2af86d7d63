-- Closing an attempt becomes a HOT update (issue 17). Each task_attempt row is updated once, by
-- the statement that ends its attempt (outcome, ended_at, duration_ms: no indexed column), but at
-- fillfactor 80 a page full of open attempts had room for few new versions, so most closes wrote
-- their new version on another page and a new entry in task_attempt_task_idx (measured: 43 % HOT).
-- Half a page free keeps a closed row on its page. New pages only; a table rewrite is not needed.
ALTER TABLE task_attempt SET (fillfactor = 50);
