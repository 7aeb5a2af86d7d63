"""Planner statistics of young tables: analysed as soon as they hold rows, not a minute later.

A table that was never analysed has no column statistics, and PostgreSQL then guesses that
``org_id = $1`` is more selective than a list of primary keys: claiming 128 tasks by id used an
organisation index over every task of the organisation (measured on 20,000 unanalysed tasks:
186 ms instead of 4 ms, issue 4). Autovacuum fixes it, but only at its next round
(``autovacuum_naptime``, 60 s by default) after the table passed its threshold. The sweeper
calls ``analyze_new_tables`` every round; once a table has statistics, autovacuum keeps them.
"""

from __future__ import annotations

from foreman.store.db import Db

# The tables queried by lists of ids or by organisation; fixed names, never input.
TABLES = ("task", "run", "run_data")
# Rows changed before a never-analysed table is analysed: below it every plan is cheap anyway.
MIN_CHANGES = 1000

_NEVER_ANALYZED = """
SELECT relname
  FROM pg_stat_user_tables
 WHERE schemaname = current_schema()
   AND relname = ANY($1::text[])
   AND last_analyze IS NULL AND last_autoanalyze IS NULL
   AND n_mod_since_analyze >= $2
"""


async def analyze_new_tables(conn: Db) -> list[str]:
    """ANALYZE the TABLES that were never analysed and changed MIN_CHANGES rows; their names."""
    names: list[str] = [r[0] for r in await conn.fetch(_NEVER_ANALYZED, list(TABLES), MIN_CHANGES)]
    for name in names:
        assert name in TABLES  # an identifier, so it cannot be a parameter
        await conn.execute(f'ANALYZE "{name}"')
    return names
