"""Schedules: insert, read, update, delete and list; and firing the due ones.

A firing creates its run and task with the statements the API uses (runs.insert_run,
tasks.insert_task: counted on the run, NOTIFY for claimers) and spends the tick, all in the
caller's transaction, which holds the schedule's row lock from claim_due_schedules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import msgspec

from foreman import ids, triggers
from foreman.models import Schedule, Task
from foreman.store import queries
from foreman.store import runs as runs_store
from foreman.store import tasks as tasks_store
from foreman.store.db import Db

_SQL = queries.load_statements("schedules")  # store/sql/schedules.sql

_SORT_COLUMNS = {"created_at": "created_at", "next_run_at": "next_run_at"}
_NO_CHANGES = msgspec.Raw(b"{}")


class _TaskTemplate(msgspec.Struct, rename="camel"):
    """The stored task document (models.ScheduledTask), inputData kept as its JSON text."""

    type: str
    input_data: msgspec.Raw
    max_retries: int
    priority: int


_read_template = msgspec.json.Decoder(_TaskTemplate).decode


@dataclass(frozen=True, slots=True)
class NewSchedule:
    """What a caller supplies to create a schedule."""

    name: str
    trigger: triggers.Trigger
    enabled: bool
    run_input_data: Any
    task: msgspec.Raw  # the task document, models.ScheduleTask encoded


def trigger_of(schedule: Schedule) -> triggers.Trigger:
    """The schedule's trigger."""
    return triggers.Trigger(
        cron=schedule.cron, interval_ms=schedule.interval_ms, timezone=schedule.timezone
    )


def _next_run_at(trigger: triggers.Trigger, *, enabled: bool, now: int) -> int | None:
    return trigger.first(now=now) if enabled else None


async def insert_schedule(
    conn: Db, *, org_id: str, schedule_id: str, new: NewSchedule, now: int
) -> Schedule:
    """Insert a schedule; enabled, its first tick is the next one after now."""
    trigger = new.trigger
    record = await conn.fetchrow(
        _SQL["insert_schedule"],
        schedule_id,
        org_id,
        new.name,
        trigger.cron,
        trigger.interval_ms,
        trigger.timezone,
        new.enabled,
        new.run_input_data,
        new.task,
        _next_run_at(trigger, enabled=new.enabled, now=now),
        now,
    )
    return queries.model_from(Schedule, record)


async def get_schedule(conn: Db, *, org_id: str, schedule_id: str) -> Schedule | None:
    """The schedule, or None."""
    return await queries.fetch_model(conn, Schedule, _SQL["get_schedule"], org_id, schedule_id)


async def delete_schedule(conn: Db, *, org_id: str, schedule_id: str) -> Schedule | None:
    """Delete the schedule (the runs it created stay); the schedule as it was, or None."""
    return await queries.fetch_model(conn, Schedule, _SQL["delete_schedule"], org_id, schedule_id)


async def update_schedule(
    conn: Db, *, org_id: str, schedule_id: str, changes: dict[str, Any], now: int
) -> Schedule | None:
    """Apply a PATCH (snake_case changes; ``task``: the task fields to change, as a JSON object).

    ``cron`` or ``interval_ms`` replaces the trigger. A changed trigger, timezone or ``enabled``
    sets the next tick anew from now (no catch-up of ticks while disabled); otherwise it stays.
    """
    async with conn.transaction():
        record = await conn.fetchrow(_SQL["lock_schedule"], org_id, schedule_id)
        if record is None:
            return None
        current = queries.model_from(Schedule, record)
        trigger = trigger_of(current)
        if "cron" in changes or "interval_ms" in changes:
            trigger = triggers.Trigger(
                cron=changes.get("cron"), interval_ms=changes.get("interval_ms")
            )
        trigger = triggers.Trigger(
            cron=trigger.cron,
            interval_ms=trigger.interval_ms,
            timezone=changes.get("timezone", current.timezone),
        )
        enabled = changes.get("enabled", current.enabled)
        next_run_at = current.next_run_at
        if trigger != trigger_of(current) or enabled != current.enabled:
            next_run_at = _next_run_at(trigger, enabled=enabled, now=now)
        record = await conn.fetchrow(
            _SQL["update_schedule"],
            org_id,
            schedule_id,
            changes.get("name", current.name),
            trigger.cron,
            trigger.interval_ms,
            trigger.timezone,
            enabled,
            changes.get("run_input_data", current.run_input_data),
            changes.get("task", _NO_CHANGES),
            next_run_at,
            now,
        )
    return queries.model_from(Schedule, record)


async def list_schedules(
    conn: Db, *, org_id: str, paging: queries.Paging
) -> queries.Page[Schedule]:
    """A page of the organisation's schedules, ties broken by id, with the total count."""
    where = queries.Where(["org_id = $1"], [org_id])
    return await queries.fetch_sorted_page(
        conn, Schedule, "schedule", where, paging, columns=_SORT_COLUMNS
    )


@dataclass(frozen=True, slots=True)
class Firing:
    """One tick of a schedule: the run and the queued task it created."""

    schedule_id: str
    scheduled_at: int  # the tick (epoch ms); the run's metadata carries it
    run_id: str
    task: Task


async def claim_due_schedules(conn: Db, *, now: int, limit: int) -> list[Schedule]:
    """Lock up to limit schedules due at now, of every organisation, that no one else holds.

    Call it in a transaction: the locks last until it ends.
    """
    records = await conn.fetch(_SQL["claim_due_schedules"], now, limit)
    return queries.models_from(Schedule, records)


async def next_due(conn: Db) -> int | None:
    """The earliest tick of an enabled schedule of any organisation (the owner's connection)."""
    due: int | None = await conn.fetchval(_SQL["next_due"])
    return due


async def fire_schedule(conn: Db, schedule: Schedule, *, now: int) -> Firing:
    """Create the run and queued task of a claimed schedule's due tick, and spend the tick.

    Ticks missed during a downtime fire once, as the latest of them (triggers.Trigger.due).
    """
    assert schedule.next_run_at is not None
    tick, next_run_at = trigger_of(schedule).due(schedule.next_run_at, now=now)
    run = await runs_store.insert_run(
        conn,
        run_id=ids.new_id(),
        org_id=schedule.org_id,
        input_data=schedule.run_input_data,
        metadata={"scheduleId": schedule.id, "scheduledAt": tick},
        now=now,
    )
    # Read from the table, the column is the document's jsonb text (store/db.py: jsonb is passed
    # through undecoded), not a ScheduledTask yet.
    template = _read_template(cast("msgspec.Raw", schedule.task))
    new = tasks_store.NewTask(
        run_id=run.id,
        task_type=template.type,
        input_data=template.input_data,
        max_retries=template.max_retries,
        priority=template.priority,
        enqueue=True,
    )
    result = await tasks_store.insert_task(
        conn, org_id=schedule.org_id, task_id=ids.new_id(), new=new, now=now
    )
    assert result.task is not None  # its run was created in this transaction
    await conn.execute(_SQL["record_firing"], schedule.id, next_run_at, now, run.id)
    return Firing(schedule.id, tick, run.id, result.task)
