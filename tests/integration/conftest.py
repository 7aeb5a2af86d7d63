"""Fixtures of the process-level integration tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def pg_work_dir() -> Iterator[Path]:
    """A temp folder for a pgserver PostgreSQL, outside pytest's own temp tree.

    As root, pgserver runs PostgreSQL as the user ``pgserver``, which must be able to reach the
    data folder; every new pytest session makes /tmp/pytest-of-<user> private again, which would
    lock a PostgreSQL of a concurrent session out of its own data.
    """
    path = Path(tempfile.mkdtemp(prefix="foreman-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
