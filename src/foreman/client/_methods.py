"""The public methods ``Client`` and ``AsyncClient`` share, each written once.

A method that sends one request is declared here as ``sends(builder)``: the builder takes the
method's arguments, carries its docstring and returns the ``Call`` (``_calls``, or an adapter
below where the public keywords differ from the plan's). When a twin's class is made it gets its
own function for each: one that sends (``Client``) or a coroutine function that awaits the send
(``AsyncClient``), named, documented and signed as the builder (``self`` first, the answer's
type last). For type checkers, ``Method.__get__`` says what the method takes and answers on each
twin. What differs between the twins beyond the send (waiting, watching, enqueueing) is written
in each twin.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Generic, ParamSpec, TypeVar, overload

from msgspec import UNSET, UnsetType

from foreman import tracing
from foreman.client import _base, _calls
from foreman.client._base import Call, TaskSpec
from foreman.models import (
    JsonObject,
    Run,
    RunData,
    RunDataList,
    RunList,
    RunStatus,
    Schedule,
    ScheduleList,
    Task,
    TaskList,
    TaskStatus,
)

P = ParamSpec("P")
T = TypeVar("T")
X = TypeVar("X")


class Method(Generic[P, T]):
    """A public method of both twins: build turns its arguments into what the twin's ``via``
    method takes (a Call for ``_send``), whose answer (a T) is the method's."""

    def __init__(self, build: Callable[P, Any], *, via: str, answer: str) -> None:
        self.build = build
        self.via = via
        signature = inspect.signature(build)
        client = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.signature = signature.replace(
            parameters=[client, *signature.parameters.values()], return_annotation=answer
        )

    @overload
    def __get__(self, client: None, owner: type[Any]) -> Method[P, T]: ...

    @overload
    def __get__(self, client: SyncTwin, owner: type[Any]) -> Callable[P, T]: ...

    @overload
    def __get__(
        self, client: AsyncTwin, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(self, client: object, owner: type[Any]) -> Any:
        # Only the declaration is looked up here: each twin has a function of its own (install).
        return self

    def function(self, owner: type[Any], *, awaited: bool) -> Callable[..., Any]:
        """The twin owner's function for this method."""
        method = (_awaiting if awaited else _sending)(self.build, self.via)
        method.__name__ = self.build.__name__
        method.__qualname__ = f"{owner.__name__}.{self.build.__name__}"
        method.__module__ = owner.__module__
        method.__doc__ = self.build.__doc__
        method.__wrapped__ = self.build  # type: ignore[attr-defined]
        method.__signature__ = self.signature  # type: ignore[attr-defined]
        return method


def _sending(build: Callable[..., Any], via: str) -> Callable[..., Any]:
    def method(client: Any, /, *args: Any, **kwargs: Any) -> Any:
        return getattr(client, via)(build(*args, **kwargs))

    return method


def _awaiting(build: Callable[..., Any], via: str) -> Callable[..., Any]:
    async def method(client: Any, /, *args: Any, **kwargs: Any) -> Any:
        return await getattr(client, via)(build(*args, **kwargs))

    return method


def sends(build: Callable[P, Call[T]]) -> Method[P, T]:
    """A method that sends the Call build makes and answers its decoded answer."""
    answer = str(inspect.signature(build).return_annotation)
    return Method(build, via="_send", answer=answer.removeprefix("Call[").removesuffix("]"))


def enqueues(build: Callable[P, TaskSpec]) -> Method[P, Task]:
    """A method that creates and queues the task build describes (the twin's ``_enqueue``)."""
    return Method(build, via="_enqueue", answer="Task")


# ---------------------------------------------------------------- adapters
# Each passes its arguments on by name: locals() at the start is exactly its parameters.


def update_run(
    run_id: str,
    *,
    status: RunStatus | UnsetType = UNSET,
    output_data: Any = UNSET,
    error_data: Any = UNSET,
    metadata: JsonObject | UnsetType | None = UNSET,
) -> Call[Run]:
    """Change the given fields of a run (metadata is replaced whole)."""
    return _calls.update_run(run_id, locals())


def list_runs(
    *,
    status: RunStatus | None = None,
    limit: int | None = None,
    offset: int | None = None,
    sort_by: str | None = None,
    sort_order: str | None = None,
) -> Call[RunList]:
    """A page of runs with the total count of matching runs."""
    return _calls.list_runs(locals())


def create_task(
    run_id: str,
    *,
    type: str,  # noqa: A002 - the issue's public signature; the JSON field is "type" too
    input_data: Any,
    parent_task_id: str | None = None,
    metadata: JsonObject | None = None,
    max_retries: int | None = None,
    priority: int | None = None,
    delay_ms: int | None = None,
    idempotency_key: str | None = None,
) -> Call[Task]:
    """Create a pending task (not queued: see enqueue_task)."""
    return _calls.create_task(TaskSpec(**locals()), enqueue=False)


def update_task(
    task_id: str,
    *,
    status: TaskStatus | UnsetType = UNSET,
    output_data: Any = UNSET,
    error_data: Any = UNSET,
    metadata: JsonObject | UnsetType | None = UNSET,
    queue_job_id: str | UnsetType | None = UNSET,
) -> Call[Task]:
    """Change the given fields of a task (legacy path; ConflictError leaving a terminal state)."""
    return _calls.update_task(task_id, locals())


def list_tasks(
    *,
    run_id: str | None = None,
    status: TaskStatus | None = None,
    type: str | None = None,  # noqa: A002 - the query parameter's name
    parent_task_id: str | None = None,
    limit: int | None = None,
    offset: int | None = None,
    sort_by: str | None = None,
    sort_order: str | None = None,
) -> Call[TaskList]:
    """A page of tasks with the total count of matching tasks."""
    return _calls.list_tasks(locals())


def enqueue_task(
    run_id: str,
    *,
    type: str,  # noqa: A002 - the issue's public signature; the JSON field is "type" too
    input_data: Any,
    parent_task_id: str | None = None,
    metadata: JsonObject | None = None,
    max_retries: int | None = None,
    priority: int | None = None,
    delay_ms: int | None = None,
    idempotency_key: str | None = None,
    depends_on: Sequence[str] | None = None,
    on_parent_failure: str | None = None,
) -> TaskSpec:
    """Create a task and queue it; a repeated idempotency_key returns the first task.

    With depends_on (parent task ids of the same run) it is ``blocked`` until every parent has
    ended; on_parent_failure ``"cancel"`` (default) or ``"run"`` says what a failed parent does.
    """
    return TaskSpec(**locals())


def create_run_data(
    run_id: str,
    *,
    task_id: str,
    key: str,
    value: Any,
    tags: Sequence[str] | None = None,
    metadata: JsonObject | None = None,
) -> Call[RunData]:
    """Store value under key (every call adds a row)."""
    return _calls.create_run_data(run_id, locals())


def query_run_data(
    run_id: str,
    *,
    key: str | None = None,
    keys: Sequence[str] | None = None,
    key_starts_with: Sequence[str] | None = None,
    key_pattern: str | None = None,
    tags: Sequence[str] | None = None,
    tag_starts_with: Sequence[str] | None = None,
    tag_mode: str | None = None,
    include_all: bool | None = None,
    limit: int | None = None,
    offset: int | None = None,
    sort_by: str | None = None,
    sort_order: str | None = None,
) -> Call[RunDataList]:
    """Run data matching the filters (the latest row per key unless include_all)."""
    return _calls.query_run_data(run_id, locals())


def create_schedule(
    name: str,
    *,
    type: str,  # noqa: A002 - the task's type, as in enqueue_task
    input_data: Any,
    cron: str | None = None,
    interval_ms: int | None = None,
    timezone: str | None = None,
    enabled: bool | None = None,
    run_input_data: Any = None,
    max_retries: int | None = None,
    priority: int | None = None,
) -> Call[Schedule]:
    """Create a schedule (cron or interval_ms): each tick creates a run with one queued task."""
    return _calls.create_schedule(locals())


def update_schedule(
    schedule_id: str,
    *,
    name: str | UnsetType = UNSET,
    cron: str | UnsetType = UNSET,
    interval_ms: int | UnsetType = UNSET,
    timezone: str | UnsetType = UNSET,
    enabled: bool | UnsetType = UNSET,
    run_input_data: Any = UNSET,
    type: str | UnsetType = UNSET,  # noqa: A002 - the task's type
    input_data: Any = UNSET,
    max_retries: int | UnsetType = UNSET,
    priority: int | UnsetType = UNSET,
) -> Call[Schedule]:
    """Change the given fields; cron or interval_ms replaces the trigger."""
    return _calls.update_schedule(schedule_id, locals())


def list_schedules(
    *,
    limit: int | None = None,
    offset: int | None = None,
    sort_by: str | None = None,
    sort_order: str | None = None,
) -> Call[ScheduleList]:
    """A page of schedules with the total count."""
    return _calls.list_schedules(locals())


# ---------------------------------------------------------------- the declarations


class Methods:
    """Every method the twins send one request for, in the order of the API reference."""

    create_run = sends(_calls.create_run)
    get_run = sends(_calls.get_run)
    update_run = sends(update_run)
    list_runs = sends(list_runs)
    cancel_run = sends(_calls.cancel_run)
    create_task = sends(create_task)
    get_task = sends(_calls.get_task)
    retry_task = sends(_calls.retry_task)
    cancel_task = sends(_calls.cancel_task)
    list_parents = sends(_calls.list_parents)
    list_attempts = sends(_calls.list_attempts)
    update_task = sends(update_task)
    list_tasks = sends(list_tasks)
    enqueue_task = enqueues(enqueue_task)
    create_run_data = sends(create_run_data)
    query_run_data = sends(query_run_data)
    update_run_data_tags = sends(_calls.update_run_data_tags)
    delete_run_data = sends(_calls.delete_run_data)
    create_schedule = sends(create_schedule)
    get_schedule = sends(_calls.get_schedule)
    update_schedule = sends(update_schedule)
    delete_schedule = sends(_calls.delete_schedule)
    list_schedules = sends(list_schedules)
    get_config = sends(_calls.get_config)
    claim_tasks = sends(_calls.claim_tasks)
    claim_task = sends(_calls.claim_task)
    claim_task_ids = sends(_calls.claim_task_ids)
    heartbeat = sends(_calls.heartbeat)
    complete_task = sends(_calls.complete_task)
    fail_task = sends(_calls.fail_task)
    release_task = sends(_calls.release_task)
    release_tasks = sends(_calls.release_tasks)
    complete_tasks = sends(_calls.complete_tasks)


def _install(cls: type[Any], *, awaited: bool) -> None:
    for name, member in vars(Methods).items():
        # A method the class defines itself (a user's subclass of Client overriding one) stays.
        if isinstance(member, Method) and name not in vars(cls):
            setattr(cls, name, member.function(cls, awaited=awaited))


class SyncTwin(Methods):
    """The base of ``Client``: its methods send and answer."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _install(cls, awaited=False)


class AsyncTwin(Methods):
    """The base of ``AsyncClient``: its methods are coroutine functions."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _install(cls, awaited=True)


# ---------------------------------------------------------------- enqueueing in batches


def created_in_batches(
    specs: Sequence[TaskSpec],
    make: Callable[[Sequence[TaskSpec]], Call[list[X]]],
    task_id: Callable[[X], str],
) -> Generator[Call[list[X]], list[X], list[X]]:
    """The create calls of specs, 1,000 tasks a request, each chunk's dependsOn refs to earlier
    chunks resolved to ids; the twin sends each and sends its answer back in; all answers."""
    made: list[X] = []
    known: dict[str, str] = {}
    for chunk in _base.chunks(specs):
        chunk = _base.resolve_refs(chunk, known)
        batch = yield make(chunk)
        _base.remember_refs(chunk, [task_id(item) for item in batch], known)
        made.extend(batch)
    return made


@contextmanager
def task_batches(
    tasks: Iterable[TaskSpec | Mapping[str, Any]], *, publishes_jobs: bool
) -> Iterator[Generator[Call[list[Task]], list[Task], list[Task]]]:
    """enqueue_tasks' requests, inside its trace span: queued by the server unless the client
    publishes the jobs (which it does inside the block)."""
    specs = [_base.task_spec(item) for item in tasks]
    with tracing.enqueue_span(specs) as traceparent:

        def create(chunk: Sequence[TaskSpec]) -> Call[list[Task]]:
            # Dependent tasks are queued by the server when released, never published here.
            enqueue = not publishes_jobs or any(spec.depends_on for spec in chunk)
            return _calls.create_tasks(chunk, enqueue=enqueue, traceparent=traceparent)

        yield created_in_batches(specs, create, lambda task: task.id)


@contextmanager
def id_batches(
    tasks: Iterable[TaskSpec | Mapping[str, Any]],
) -> Iterator[Generator[Call[list[str]], list[str], list[str]]]:
    """enqueue_task_ids' requests, inside its trace span: queued by the server, answered with
    ids only."""
    specs = [_base.task_spec(item) for item in tasks]
    with tracing.enqueue_span(specs) as traceparent:

        def create(chunk: Sequence[TaskSpec]) -> Call[list[str]]:
            return _calls.create_task_ids(chunk, traceparent=traceparent)

        yield created_in_batches(specs, create, str)


def drive(plan: Generator[Call[Any], Any, T], send: Callable[[Call[Any]], Any]) -> T:
    """plan's result, each of its calls sent (blocking) and its answer sent back in."""
    try:
        call = next(plan)
        while True:
            call = plan.send(send(call))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
