"""A bounded API load from several concurrent clients that remembers every acknowledged write.

Each client repeats four steps: create a run, create a task in one of its runs (twice), and
patch one of its runs' metadata with a version number that only grows. It prefers one server and
moves to the next one on a connection error (failover between replicas). A write answered 2xx is
*acknowledged* and must be found afterwards, exactly; a write answered otherwise (503, connection
dropped) may or may not have happened: it is counted, never required.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from tests.conftest import HEADERS_A, ORG_A

REQUEST_TIMEOUT_S = 10.0  # a request unanswered after this long counts as hung
OPS = ("create_run", "create_task", "patch_run", "create_task")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: where it went, how it ended, when."""

    client: int
    endpoint: str
    op: str
    status: str  # the HTTP status, or "transport" (no answer), or "hung" (timed out)
    started: float  # time.monotonic()
    finished: float

    @property
    def acknowledged(self) -> bool:
        return self.status.startswith("2")

    @property
    def latency_s(self) -> float:
        return self.finished - self.started


@dataclass(slots=True)
class RunRecord:
    """An acknowledged run: its input, and the metadata versions sent and acknowledged."""

    input_data: dict[str, Any]
    patch_sent: int = 0
    patch_acked: int = 0


@dataclass(slots=True)
class Ledger:
    """Every request sent and every write acknowledged."""

    outcomes: list[Outcome] = field(default_factory=list)
    runs: dict[str, RunRecord] = field(default_factory=dict)
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> run id

    def statuses(self, *, since: float = 0.0, endpoint: str | None = None) -> Counter[str]:
        """How many requests ended with each status (started at or after since)."""
        return Counter(
            o.status
            for o in self.outcomes
            if o.started >= since and (endpoint is None or o.endpoint == endpoint)
        )

    def first_ack_after(self, moment: float, *, client: int | None = None) -> float | None:
        """Seconds from moment to the first acknowledged request sent after it (by client)."""
        acks = [
            o.finished
            for o in self.outcomes
            if o.acknowledged and o.started >= moment and client in (None, o.client)
        ]
        return round(min(acks) - moment, 3) if acks else None

    def error_window_s(self) -> float | None:
        """Seconds from the first request that was not acknowledged to the end of the last."""
        failed = [o for o in self.outcomes if not o.acknowledged]
        if not failed:
            return None
        return round(max(o.finished for o in failed) - min(o.started for o in failed), 3)

    def figures(self) -> dict[str, Any]:
        """Requests sent, acknowledged, refused, unanswered, and the slowest answers."""
        statuses = self.statuses()
        errors = [o.latency_s for o in self.outcomes if not o.acknowledged]
        return {
            "requests_sent": len(self.outcomes),
            "acknowledged": sum(o.acknowledged for o in self.outcomes),
            "refused_503": statuses["503"],
            "transport_errors": statuses["transport"],
            "hung": statuses["hung"],
            "statuses": dict(sorted(statuses.items())),
            "max_request_s": round(max((o.latency_s for o in self.outcomes), default=0.0), 3),
            "max_error_answer_s": round(max(errors, default=0.0), 3),
            "acknowledged_writes": {"runs": len(self.runs), "tasks": len(self.tasks)},
        }


async def _send(http: httpx.AsyncClient, method: str, url: str, body: Any) -> tuple[str, Any]:
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            response = await http.request(method, url, json=body)
    except (TimeoutError, httpx.TimeoutException):
        return "hung", None
    except httpx.TransportError:
        return "transport", None
    answer = response.json() if response.status_code < 300 else None
    return str(response.status_code), answer


class _Client:
    """One simulated API client: its own runs, its preferred server, its step counter."""

    def __init__(self, index: int, endpoints: list[str], ledger: Ledger, *, task: dict[str, Any]):
        self.index = index
        self.endpoints = endpoints
        self.preferred = index % len(endpoints)
        self.ledger = ledger
        self.task = task  # type and enqueue flag of the tasks it creates
        self.own: list[str] = []

    def _request(self, op: str, step: int) -> tuple[str, str, Any]:
        if op == "create_run":
            return "POST", "/api/v1/runs", {"inputData": {"load": self.index, "seq": step}}
        run_id = self.own[step % len(self.own)]
        if op == "create_task":
            body = {"runId": run_id, "inputData": {"load": self.index, "seq": step}, **self.task}
            return "POST", "/api/v1/tasks", body
        record = self.ledger.runs[run_id]
        record.patch_sent += 1  # before sending: an unanswered patch may still be applied
        return "PATCH", f"/api/v1/runs/{run_id}", {"metadata": {"v": record.patch_sent}}

    def _remember(self, op: str, body: Any, answer: Any) -> None:
        if op == "create_run":
            self.ledger.runs[answer["id"]] = RunRecord(input_data=body["inputData"])
            self.own.append(answer["id"])
        elif op == "create_task":
            self.ledger.tasks[answer["id"]] = body["runId"]
        else:
            record = self.ledger.runs[answer["id"]]
            record.patch_acked = max(record.patch_acked, body["metadata"]["v"])

    async def run(self, *, stop_at: float, pace_s: float) -> None:
        async with httpx.AsyncClient(headers=HEADERS_A) as http:
            for step in itertools.count():
                if time.monotonic() >= stop_at:
                    return
                op = OPS[step % len(OPS)] if self.own else "create_run"
                method, path, body = self._request(op, step)
                endpoint = self.endpoints[self.preferred]
                started = time.monotonic()
                status, answer = await _send(http, method, endpoint + path, body)
                self.ledger.outcomes.append(
                    Outcome(self.index, endpoint, op, status, started, time.monotonic())
                )
                if answer is not None:
                    self._remember(op, body, answer)
                if status == "transport":  # that server is gone: fail over
                    self.preferred = (self.preferred + 1) % len(self.endpoints)
                await asyncio.sleep(pace_s)


async def drive(
    endpoints: list[str],
    ledger: Ledger,
    *,
    clients: int,
    duration_s: float,
    pace_s: float = 0.02,
    task_type: str = "noop",
    enqueue: bool = False,
) -> None:
    """Run the clients for duration_s (each request bounded by REQUEST_TIMEOUT_S)."""
    stop_at = time.monotonic() + duration_s
    task = {"type": task_type, "enqueue": enqueue}
    await asyncio.gather(
        *(
            _Client(i, endpoints, ledger, task=task).run(stop_at=stop_at, pace_s=pace_s)
            for i in range(clients)
        )
    )


def error_lines(log: str, *, limit: int = 5) -> list[str]:
    """The server's ERROR lines, each with the last line of its traceback (the exception)."""
    lines = log.splitlines()
    found = []
    for i, line in enumerate(lines):
        if " ERROR " not in line:
            continue
        exception = next(
            (later for later in lines[i + 1 :] if later and not later[0].isspace()
             and not later.startswith("Traceback")),
            "",
        )  # fmt: skip
        found.append(f"{line} -> {exception}")
    return found[:limit]


@dataclass(frozen=True, slots=True)
class WriteCheck:
    """What the database holds of the acknowledged writes."""

    runs: int
    tasks: int
    lost: list[str]  # one line per acknowledged write that is missing or wrong
    unacknowledged_applied: int  # writes whose answer was lost but which did commit
    unacknowledged_tasks: int  # of them, task creations

    def figures(self) -> dict[str, Any]:
        return {
            "lost": len(self.lost),
            "unacknowledged_applied": self.unacknowledged_applied,
        }


_RUNS = "SELECT id::text, input_data::text, metadata::text FROM run WHERE id = ANY($1::uuid[])"
_TASKS = "SELECT id::text, run_id::text FROM task WHERE id = ANY($1::uuid[])"
_LOAD_ROWS = """
SELECT (SELECT count(*) FROM run WHERE org_id = $1 AND input_data ? 'load'),
       (SELECT count(*) FROM task WHERE org_id = $1 AND input_data ? 'load')
"""


def _run_problems(run_id: str, record: RunRecord, row: asyncpg.Record | None) -> list[str]:
    if row is None:
        return [f"run {run_id}: acknowledged (201) but not in the database"]
    problems = []
    if json.loads(row["input_data"]) != record.input_data:
        problems.append(f"run {run_id}: inputData changed")
    version = (json.loads(row["metadata"] or "null") or {}).get("v", 0)
    if not record.patch_acked <= version <= record.patch_sent:
        problems.append(
            f"run {run_id}: metadata v={version}, acknowledged up to {record.patch_acked}"
        )
    return problems


async def check_writes(ledger: Ledger, database_url: str) -> WriteCheck:
    """Look every acknowledged write up in the database (as its owner, past the API)."""
    conn = await asyncpg.connect(database_url)
    try:
        runs = {r["id"]: r for r in await conn.fetch(_RUNS, list(ledger.runs))}
        tasks = {r["id"]: r["run_id"] for r in await conn.fetch(_TASKS, list(ledger.tasks))}
        counts = await conn.fetchrow(_LOAD_ROWS, ORG_A)
    finally:
        await conn.close()
    assert counts is not None
    load_runs, load_tasks = counts
    lost: list[str] = []
    for run_id, record in ledger.runs.items():
        lost += _run_problems(run_id, record, runs.get(run_id))
    for task_id, run_id in ledger.tasks.items():
        if tasks.get(task_id) != run_id:
            lost.append(f"task {task_id}: acknowledged (201) but not in run {run_id}")
    unacknowledged_tasks = load_tasks - len(ledger.tasks)
    applied = load_runs - len(ledger.runs) + unacknowledged_tasks
    return WriteCheck(len(runs), len(tasks), lost, applied, unacknowledged_tasks)


# ---------------------------------------------------------------- tasks and run counters

_TASK_STATES = """
SELECT status, count(*) AS n, count(*) FILTER (WHERE attempt > 1) AS rerun
  FROM task
 WHERE org_id = $1
 GROUP BY status
"""
_COMPLETIONS = """
SELECT min(completed_at) FILTER (WHERE completed_at >= $2), max(completed_at)
  FROM task
 WHERE org_id = $1
"""
# Each run's counters (summed over its shards) against its tasks, counted one by one.
_COUNTER_MISMATCHES = """
WITH t AS (
    SELECT run_id, count(*) AS total,
           count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE status = 'failed') AS failed
      FROM task WHERE org_id = $1 GROUP BY run_id
), c AS (
    SELECT run_id, sum(total_tasks) AS total, sum(completed_tasks) AS completed,
           sum(failed_tasks) AS failed
      FROM run_counter WHERE org_id = $1 GROUP BY run_id
)
SELECT t.run_id::text, t.total, t.completed, t.failed, c.total, c.completed, c.failed
  FROM t LEFT JOIN c USING (run_id)
 WHERE (t.total, t.completed, t.failed) IS DISTINCT FROM (c.total, c.completed, c.failed)
"""


@dataclass(frozen=True, slots=True)
class TaskStates:
    """How many tasks of the load's organisation are in each status."""

    counts: dict[str, int]
    rerun: int  # tasks that needed more than one attempt

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def unfinished(self) -> int:
        return self.total - sum(self.counts.get(s, 0) for s in ("completed", "failed", "cancelled"))


async def task_states(database_url: str) -> TaskStates:
    """The status counts right now."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(_TASK_STATES, ORG_A)
    finally:
        await conn.close()
    return TaskStates({r["status"]: r["n"] for r in rows}, sum(r["rerun"] for r in rows))


async def wait_tasks_finished(database_url: str, *, timeout_s: float) -> TaskStates:
    """The status counts once no task is left unfinished; AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = await task_states(database_url)
        if states.unfinished == 0:
            return states
        assert time.monotonic() < deadline, f"tasks still unfinished after {timeout_s}s: {states}"
        await asyncio.sleep(0.2)


async def completions(database_url: str, *, since_ms: int) -> tuple[int | None, int | None]:
    """Epoch ms of the first task completed at or after since_ms, and of the last one."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(_COMPLETIONS, ORG_A, since_ms)
    finally:
        await conn.close()
    assert row is not None
    first, last = row
    return first, last


async def counter_mismatches(database_url: str) -> list[str]:
    """Runs whose counters differ from their tasks (must be none: counters are exact)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(_COUNTER_MISMATCHES, ORG_A)
    finally:
        await conn.close()
    return [
        f"run {r[0]}: tasks (total, completed, failed) {tuple(r[1:4])}, counters {tuple(r[4:])}"
        for r in rows
    ]
