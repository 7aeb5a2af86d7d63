"""Typed handlers: registered by decorator, with their input validated into a model.

``Handlers`` is a mapping of task type to handler, so it goes wherever a handler dict does
(``Worker(client, handlers)``, ``foreman worker module:HANDLERS``)::

    handlers = Handlers()

    class Resize(pydantic.BaseModel):  # or a msgspec.Struct
        url: str
        width: int

    @handlers.task("resize")
    async def resize(ctx: TaskContext, data: Resize) -> dict:
        return {"thumb": f"{data.url}@{data.width}"}

A handler whose second parameter is annotated with a pydantic model or a msgspec Struct (or that
names one with ``input=``) gets ``inputData`` converted into it. Input that does not fit fails the
task at once, without retries: ``errorData = {"type": "InputValidationError", "message",
"field"}``; retrying the same input could not succeed.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import msgspec

from foreman import errors
from foreman.worker.context import TaskContext

F = TypeVar("F", bound=Callable[..., Any])
Handler = Callable[[TaskContext], Any]


class Handlers(Mapping[str, Handler]):
    """Task handlers by type, registered with ``@handlers.task("type")``."""

    def __init__(self) -> None:
        self._by_type: dict[str, Handler] = {}

    def task(self, task_type: str | None = None, *, input: Any = None) -> Callable[[F], F]:  # noqa: A002 - the natural name
        """Register the decorated function for task_type (default: its name); returns it as is."""

        def register(fn: F) -> F:
            name = task_type or fn.__name__
            if name in self._by_type:
                raise ValueError(f"a handler for task type {name!r} is registered already")
            self._by_type[name] = typed(fn, input)
            return fn

        return register

    def __getitem__(self, task_type: str) -> Handler:
        return self._by_type[task_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_type)

    def __len__(self) -> int:
        return len(self._by_type)


def typed(fn: Callable[..., Any], model: Any = None) -> Handler:
    """fn as a handler of one TaskContext: ``fn(ctx, converted input)`` when it takes a model."""
    model = model or _input_model(fn)
    if model is None:
        return fn
    convert = _converter(model)
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(ctx: TaskContext) -> Any:
            return await fn(ctx, convert(ctx.input_data))

        return run_async

    @functools.wraps(fn)
    def run_sync(ctx: TaskContext) -> Any:
        return fn(ctx, convert(ctx.input_data))

    return run_sync


def _input_model(fn: Callable[..., Any]) -> Any:
    """The model annotated on fn's second parameter, if it is a pydantic model or msgspec Struct."""
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 2:
        return None
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):
        return None
    hint = hints.get(params[1].name)
    return hint if _is_model(hint) else None


def _is_model(hint: Any) -> bool:
    if not isinstance(hint, type):
        return False
    if issubclass(hint, msgspec.Struct):
        return True
    pydantic = _pydantic()
    return pydantic is not None and issubclass(hint, pydantic.BaseModel)


def _pydantic() -> Any:
    try:
        import pydantic
    except ImportError:  # pragma: no cover - pydantic comes with pydantic-settings
        return None
    return pydantic


def _converter(model: Any) -> Callable[[Any], Any]:
    if isinstance(model, type) and issubclass(model, msgspec.Struct):
        return functools.partial(_from_msgspec, model)
    pydantic = _pydantic()
    if pydantic is not None and isinstance(model, type) and issubclass(model, pydantic.BaseModel):
        return functools.partial(_from_pydantic, model, pydantic.ValidationError)
    raise TypeError(f"input model must be a pydantic model or a msgspec Struct, got {model!r}")


def _from_msgspec(model: type[msgspec.Struct], data: Any) -> Any:
    try:
        return msgspec.convert(data, model, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise errors.InputValidationError(
            f"inputData: {message}", field=_msgspec_field(message)
        ) from exc


def _msgspec_field(message: str) -> str | None:
    # msgspec: "Expected `int`, got `str` - at `$.a.b`", "Object missing required field `x`".
    at = ""
    if " - at `$" in message:
        message, _, path = message.partition(" - at `$")
        at = path.rstrip("`").lstrip(".")
    if "missing required field `" in message:
        name = message.split("missing required field `", 1)[1].split("`", 1)[0]
        return f"{at}.{name}" if at else name
    return at or None


def _from_pydantic(model: Any, validation_error: type[Exception], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except validation_error as exc:
        first = exc.errors()[0]  # type: ignore[attr-defined]
        field = ".".join(str(part) for part in first["loc"]) or None
        message = f"inputData.{field}: {first['msg']}" if field else f"inputData: {first['msg']}"
        raise errors.InputValidationError(message, field=field) from exc
