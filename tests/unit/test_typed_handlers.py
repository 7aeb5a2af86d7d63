"""worker/handlers.py: registration and input conversion (pure: no service involved)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pydantic
import pytest

from foreman import Handlers, InputValidationError, TaskContext
from foreman.worker.handlers import typed


class PointModel(pydantic.BaseModel):
    x: int
    y: int = 0


class PointStruct(msgspec.Struct):
    x: int
    label: str = ""


class FakeContext:
    def __init__(self, input_data: Any) -> None:
        self.input_data = input_data


def test_decorator_registers_by_type_or_name_and_refuses_repeats():
    handlers = Handlers()

    @handlers.task("add")
    async def add(ctx: TaskContext) -> int:
        return 1

    @handlers.task()
    def named(ctx: TaskContext) -> int:
        return 2

    assert sorted(handlers) == ["add", "named"]
    assert handlers["add"] is add  # no model: registered as is
    with pytest.raises(ValueError, match="registered already"):
        handlers.task("add")(named)


def test_pydantic_and_msgspec_models_convert_the_input():
    async def pyd(ctx: TaskContext, data: PointModel) -> Any:
        return data

    def msg(ctx: TaskContext, data: PointStruct) -> Any:
        return data

    assert asyncio.run(typed(pyd)(FakeContext({"x": 3}))) == PointModel(x=3, y=0)
    assert typed(msg)(FakeContext({"x": 4, "label": "a"})) == PointStruct(x=4, label="a")


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        (PointModel, {"y": 1}, "x"),
        (PointModel, {"x": "not a number"}, "x"),
        (PointStruct, {"x": 1, "label": 5}, "label"),
        (PointStruct, {}, "x"),
        (PointStruct, [1], None),
    ],
)
def test_input_that_does_not_fit_names_the_field(model, data, field):
    def handler(ctx: TaskContext, data: Any) -> Any:
        return data

    with pytest.raises(InputValidationError) as raised:
        typed(handler, model)(FakeContext(data))
    assert raised.value.details["field"] == field
    assert "inputData" in raised.value.message
