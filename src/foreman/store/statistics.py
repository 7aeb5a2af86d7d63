"""Planner statistics of young tables: analysed as soon as they hold rows, not a minute later.

A table without column statistics (never analysed, or analysed only while it was empty, as after
a fresh deployment's first VACUUM) leaves PostgreSQL guessing that ``org_id = $1`` is more
selective than a list of primary keys: claiming 128 tasks by id used an organisation index over
every task of the organisation (measured on 20,000 unanalysed tasks: 186 ms instead of 4 ms;
completing 300 tasks by id 17 ms instead of 8 ms, issue 4). Autovacuum fixes it, but only at its
next round (``autovacuum_naptime``, 60 s by default) after the table passed its threshold. The
sweeper calls ``analyze_new_tables`` every round; once a table has column statistics,
autovacuum keeps them (they are fractions: they hold while the table grows).
"""

from __future__ import annotations

from foreman.store.db import Db

# The tables queried by lists of ids or by organisation; fixed names, never input.
TABLES = ("task", "run", "run_data", "task_attempt", "task_dependency")
# Rows changed before a never-analysed table is analysed: below it every plan is cheap anyway.
MIN_CHANGES = 1000

# No column statistics: never analysed (nor vacuumed: reltuples -1), or analysed while empty
# (reltuples 0). Only the catalog's counters: no pg_stats, whose rows depend on the caller's
# privileges and row-level security, and which costs a scan of pg_class per table.
_WITHOUT_STATISTICS = """
SELECT t.relname
  FROM pg_stat_user_tables t
  JOIN pg_class c ON c.oid = t.relid
 WHERE t.schemaname = current_schema()
   AND t.relname = ANY($1::text[])
   AND t.n_mod_since_analyze >= $2
   AND (c.reltuples <= 0 OR (t.last_analyze IS NULL AND t.last_autoanalyze IS NULL))
"""


async def analyze_new_tables(conn: Db) -> list[str]:
    """ANALYZE the TABLES without column statistics that changed MIN_CHANGES rows; their names."""
    names: list[str] = [
        r["relname"] for r in await conn.fetch(_WITHOUT_STATISTICS, list(TABLES), MIN_CHANGES)
    ]
    for name in names:
        assert name in TABLES  # an identifier, so it cannot be a parameter
        await conn.execute(f'ANALYZE "{name}"')
    return names
