"""store/queries.py: the named-statement loader and models built from records by column name."""

from __future__ import annotations

import pytest

from foreman.models import RunData, Task
from foreman.store import queries


class Record(tuple):
    """Stands in for an asyncpg Record: values by position, column names from keys()."""

    names: tuple[str, ...] = ()

    def keys(self):
        return iter(self.names)


def record(**columns) -> Record:
    made = Record(columns.values())
    made.names = tuple(columns)
    return made


def test_statements_are_split_by_name_without_their_description():
    text = (
        "-- A file header.\n\n"
        "-- first --\n-- What it does.\n-- $1 org.\nSELECT 1\n  FROM x\n\n"
        "-- second --\nSELECT 2\n"
    )
    assert queries.parse_statements(text) == {"first": "SELECT 1\n  FROM x", "second": "SELECT 2"}


@pytest.mark.parametrize(
    "text", ["-- a --\nSELECT 1\n-- a --\nSELECT 2\n", "-- a --\n-- only a comment\n"]
)
def test_a_repeated_name_or_an_empty_statement_is_refused(text):
    with pytest.raises(ValueError, match=r"repeats|empty"):
        queries.parse_statements(text)


def test_every_store_statement_file_loads():
    for file in ("queue", "tasks", "runs", "run_data"):
        statements = queries.load_statements(file)
        assert statements
        assert all("$1" in sql or "RETURNING" in sql for sql in statements.values()), file


def test_models_are_built_by_column_name_whatever_the_order():
    columns = {
        "notified": 1,
        "updated_at": 6,
        "key": "k",
        "id": "d1",
        "tags": ["t"],
        "run_id": "r",
        "org_id": "o",
        "task_id": "t",
        "value": None,
        "metadata": None,
        "created_at": 5,
    }
    (item,) = queries.models_from(RunData, [record(**columns)])
    assert item == RunData("d1", "r", "t", "o", "k", None, ["t"], None, 5, 6)


def test_a_missing_or_repeated_column_fails_loudly():
    with pytest.raises(ValueError, match="needs the columns"):
        queries.model_from(RunData, record(id="d1", run_id="r", key="k"))
    repeated = Record(("a", "r", "x", "y"))
    repeated.names = ("id", "run_id", "status", "status")  # a join's two status columns
    with pytest.raises(ValueError, match="twice"):
        queries.model_from(Task, repeated)


def test_optional_trailing_fields_keep_their_defaults():
    required = dict.fromkeys(Task.__struct_fields__[:13], 0)
    task = queries.model_from(Task, record(**required))
    assert task.lease_token is None
    assert task.worker_id is None
