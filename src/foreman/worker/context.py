"""TaskContext: what a handler receives about its task, and helpers to read and write run data."""

from __future__ import annotations

import asyncio
import functools
import operator
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from foreman.client import AsyncClient
from foreman.models import JsonObject, RunData, RunDataList, Task

T = TypeVar("T")
P = ParamSpec("P")


@dataclass(slots=True)
class AttemptState:
    """What the worker learns about an attempt while its handler runs."""

    cancelled: bool = False  # the task was cancelled (heartbeat answer)
    lease_lost: bool = False  # the lease expired or was taken over: the result will be dropped
    released: bool = False  # the worker gave the task back (forced stop)
    # Set with any of the three flags: what ctx.wait_cancelled() awaits. Made on first use
    # (below): nearly every attempt ends without a wait, and an Event per task was a cost.
    _stop: asyncio.Event | None = field(default=None, repr=False, compare=False)

    @property
    def stop(self) -> asyncio.Event:
        """Set once any of the three flags is raised (made in the worker's loop, on first use)."""
        if self._stop is None:
            self._stop = asyncio.Event()
            if self.cancelled or self.lease_lost or self.released:
                self._stop.set()
        return self._stop

    def mark(
        self, *, cancelled: bool = False, lease_lost: bool = False, released: bool = False
    ) -> None:
        """Raise the given flags and wake wait_cancelled()."""
        self.cancelled |= cancelled
        self.lease_lost |= lease_lost
        self.released |= released
        self.stop.set()


class _OfTask(Generic[T]):
    """A read-only attribute of the context: its task's field of the same name."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc
        self._get: Callable[[TaskContext], T] = operator.attrgetter("task")

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._get = operator.attrgetter(f"task.{name}")

    @overload
    def __get__(self, ctx: None, owner: type[Any]) -> _OfTask[T]: ...

    @overload
    def __get__(self, ctx: TaskContext, owner: type[Any]) -> T: ...

    def __get__(self, ctx: TaskContext | None, owner: type[Any]) -> _OfTask[T] | T:
        return self if ctx is None else self._get(ctx)


def _blocking(
    method: Callable[Concatenate[TaskContext, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[TaskContext, P], T]:
    """The twin of an async helper for sync handlers (they run in a worker thread)."""

    @functools.wraps(method)
    def blocking(ctx: TaskContext, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return ctx._block(method(ctx, *args, **kwargs))

    blocking.__name__ = f"{method.__name__}_sync"
    blocking.__qualname__ = f"{method.__qualname__}_sync"
    blocking.__doc__ = f"``{method.__name__}`` for sync handlers (they run in a worker thread)."
    return blocking


@dataclass(frozen=True, slots=True)
class TaskContext:
    """The task a handler runs, its attempt, and run-data helpers bound to its run.

    Async handlers use ``await ctx.set_data(...)``; sync handlers, which run in a thread, use the
    ``*_sync`` twins. ``ctx.cancelled`` turns true when the task is cancelled or the worker lost
    its lease; a long handler should check it (or ``await ctx.wait_cancelled()``) and return early.
    A cancelled task ends ``cancelled`` whatever the handler returns.
    """

    task: Task
    worker_id: str
    client: AsyncClient
    state: AttemptState
    loop: asyncio.AbstractEventLoop

    id = _OfTask[str]("The task id.")
    type = _OfTask[str]("The task type (the handler's key).")
    run_id = _OfTask[str]("The run the task belongs to.")
    input_data = _OfTask[Any]("The task's input, decoded from JSON.")
    metadata = _OfTask[JsonObject | None]("The task's metadata.")
    attempt = _OfTask[int]("This attempt's number: 1 on the first run.")
    max_retries = _OfTask[int]("How many retries the task allows after its first attempt.")

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled or this worker lost its lease: stop working."""
        return self.state.cancelled or self.state.lease_lost or self.state.released

    async def wait_cancelled(self) -> None:
        """Return once ``cancelled`` turns true (for async handlers: race it with the work).

        ``asyncio.wait`` the handler's work against it, or run the work in a TaskGroup with a
        task that awaits it and raises to stop the others.
        """
        if not self.cancelled:
            await self.state.stop.wait()

    async def set_data(
        self,
        key: str,
        value: Any,
        *,
        tags: Sequence[str] | None = None,
        metadata: JsonObject | None = None,
    ) -> RunData:
        """Store value under key in the run, attributed to this task."""
        return await self.client.create_run_data(
            self.run_id, task_id=self.id, key=key, value=value, tags=tags, metadata=metadata
        )

    async def get_data(self, key: str, default: Any = None) -> Any:
        """The latest value stored under key in the run, or default."""
        page = await self.client.query_run_data(self.run_id, key=key, limit=1)
        return page.data[0].value if page.data else default

    async def query_data(self, **filters: Any) -> RunDataList:
        """Run data of this run matching the filters of ``AsyncClient.query_run_data``."""
        return await self.client.query_run_data(self.run_id, **filters)

    async def parent_outputs(self, *, page_size: int = 1000) -> dict[str, Any]:
        """``{parent task id: outputData}`` of every parent (dependsOn), paging through them."""
        outputs: dict[str, Any] = {}
        while True:
            page = await self.client.list_parents(self.id, limit=page_size, offset=len(outputs))
            outputs.update((parent.id, parent.output_data) for parent in page.data)
            if not page.data or len(outputs) >= page.pagination.total:
                return outputs

    parent_outputs_sync = _blocking(parent_outputs)
    set_data_sync = _blocking(set_data)
    get_data_sync = _blocking(get_data)

    def query_data_sync(self, **filters: Any) -> RunDataList:
        """``query_data`` for sync handlers."""
        return self._block(self.query_data(**filters))

    def _block(self, coro: Coroutine[Any, Any, T]) -> T:
        # The client belongs to the worker's event loop; a sync handler's thread hands it the call.
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coro.close()
            raise RuntimeError("Use the async helpers (await ctx.set_data) in async handlers")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()
