-- Run data (store/run_data.py). Each statement is whole: store/queries.py loads it by the name in
-- its `-- name --` line; the comment lines right below that line describe it.
-- Columns are named as the fields of models.RunData.

-- run_exists --
-- $1 org, $2 run id.
SELECT EXISTS (SELECT 1 FROM run WHERE org_id = $1 AND id = $2)

-- insert_run_data --
-- One value under a key, when the run exists and the task belongs to it. $1 org, $2 run,
-- $3 task, $4 id, $5 key, $6 value, $7 tags, $8 metadata, $9 now.
WITH r AS (
    SELECT id FROM run WHERE org_id = $1 AND id = $2
), t AS (
    SELECT id FROM task WHERE org_id = $1 AND id = $3 AND run_id = $2
), d AS (
    INSERT INTO run_data (id, run_id, task_id, org_id, key, value, tags, metadata,
                          created_at, updated_at)
    SELECT $4, r.id, t.id, $1, $5, $6, $7, $8, $9, $9 FROM r, t
    RETURNING *
)
SELECT EXISTS (SELECT 1 FROM r) AS run_found,
       d.id, d.run_id, d.task_id, d.org_id, d.key, d.value, d.tags, d.metadata,
       d.created_at, d.updated_at
  FROM (SELECT 1) AS one LEFT JOIN d ON true

-- update_tags --
-- Remove ($4) first, then append each added tag ($5) not already there, first occurrences kept in
-- order: the row's tags as updated by this statement (recomputed on the latest row version if a
-- concurrent update got there first). Refused (no row) when the entry would pass $7 tags.
-- $1 org, $2 run, $3 entry id, $6 now.
WITH d AS (
    UPDATE run_data
       SET tags = (
               SELECT coalesce(array_agg(tag ORDER BY first), '{}')
                 FROM (SELECT tag, min(n) AS first
                         FROM unnest(array_cat(
                                  ARRAY(SELECT x FROM unnest(tags) AS x WHERE x <> ALL($4::text[])),
                                  $5::text[])) WITH ORDINALITY AS u(tag, n)
                        GROUP BY tag) AS kept
           ),
           updated_at = $6
     WHERE org_id = $1 AND run_id = $2 AND id = $3
       AND (SELECT count(DISTINCT tag)
              FROM unnest(array_cat(
                       ARRAY(SELECT x FROM unnest(tags) AS x WHERE x <> ALL($4::text[])),
                       $5::text[])) WITH ORDINALITY AS u(tag, n)) <= $7
    RETURNING *
)
SELECT d.id, d.run_id, d.task_id, d.org_id, d.key, d.value, d.tags, d.metadata,
       d.created_at, d.updated_at
  FROM d

-- run_data_exists --
-- $1 org, $2 run, $3 entry id.
SELECT EXISTS (SELECT 1 FROM run_data WHERE org_id = $1 AND run_id = $2 AND id = $3)
