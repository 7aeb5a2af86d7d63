-- Schedules (store/schedules.py). Each statement is whole: store/queries.py loads it by the name
-- in its `-- name --` line; the comment lines right below that line describe it.
-- Rows are answered whole (`*`): the columns are named as the fields of models.Schedule.

-- insert_schedule --
-- $1 id, $2 org, $3 name, $4 cron, $5 interval ms, $6 timezone, $7 enabled, $8 run input,
-- $9 task document, $10 next run at, $11 now.
INSERT INTO schedule (id, org_id, name, cron, interval_ms, timezone, enabled, run_input_data,
                      task, next_run_at, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
RETURNING *

-- get_schedule --
-- $1 org, $2 schedule id.
SELECT * FROM schedule WHERE org_id = $1 AND id = $2

-- lock_schedule --
-- The schedule, locked until the PATCH that read it commits: a firing (which claims with SKIP
-- LOCKED) cannot advance nextRunAt in between. $1 org, $2 schedule id.
SELECT * FROM schedule WHERE org_id = $1 AND id = $2 FOR UPDATE

-- update_schedule --
-- Every changeable column at once, from the locked row merged with the PATCH; the task
-- document is merged key by key (jsonb ||). $1 org, $2 id, $3 name, $4 cron, $5 interval ms,
-- $6 timezone, $7 enabled, $8 run input, $9 task changes, $10 next run at, $11 now.
UPDATE schedule
   SET name = $3, cron = $4, interval_ms = $5, timezone = $6, enabled = $7,
       run_input_data = $8, task = task || $9, next_run_at = $10, updated_at = $11
 WHERE org_id = $1 AND id = $2
RETURNING *

-- delete_schedule --
-- $1 org, $2 schedule id.
DELETE FROM schedule WHERE org_id = $1 AND id = $2 RETURNING *

-- claim_due_schedules --
-- The firing loop, across organisations (the owner's connection): due schedules, locked until
-- the transaction that fires them commits. SKIP LOCKED: a schedule another replica is firing is
-- left to it. A row that replica committed after this statement's snapshot is re-read when it is
-- locked here and checked against the WHERE clause again: its nextRunAt now lies after now.
-- $1 now, $2 limit.
SELECT *
  FROM schedule
 WHERE enabled AND next_run_at <= $1
 ORDER BY next_run_at
 LIMIT $2
   FOR UPDATE SKIP LOCKED

-- next_due --
-- When the firing loop is next needed: the earliest tick of an enabled schedule of any
-- organisation (schedule_due_idx). NULL when there is none.
SELECT min(next_run_at) FROM schedule WHERE enabled

-- record_firing --
-- In the transaction that created the run: the tick is spent. $1 id, $2 next run at,
-- $3 fired at, $4 run id.
UPDATE schedule
   SET next_run_at = $2, last_run_at = $3, last_run_id = $4
 WHERE id = $1
