"""Traces (README "Traces") end to end in this process, with the SDK's in-memory exporter: the
client's enqueue span, the server's request and statement spans, and the worker's handler span
in one trace, on each queue backend (real PostgreSQL, Redis, RabbitMQ and moto's SQS).

The server runs in a thread (uvicorn), with OTEL_EXPORTER_OTLP_ENDPOINT set as an operator would;
the tracer provider this module sets is the one the server, client and worker then find.
OpenTelemetry sets a provider once per process: after this module its sampler drops every span.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import asyncpg
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, StatusCode

from foreman import AsyncClient, Client, TaskSpec, Worker
from foreman.queue.rabbitmq import RabbitMQQueue
from foreman.worker.context import TaskContext
from tests.conftest import HEADERS_A, KEY_A, ORG_A
from tests.queue_helpers import LiveApp, obliterate, redis_settings, unique_queue_name

pytestmark = pytest.mark.timeout(90)


class _Switch(Sampler):
    """Records every span while on; drops all once this module is done."""

    on = False

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> SamplingResult:
        if not self.on:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)  # the span's attributes

    def get_description(self) -> str:
        return "tests.integration.test_traces"


_SWITCH = _Switch()
_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(sampler=_SWITCH)
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _SWITCH.on = True
    try:
        yield _EXPORTER
    finally:
        _SWITCH.on = False
        _EXPORTER.clear()
        with contextlib.suppress(Exception):  # instrumented by the first traced app
            AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]


@pytest.fixture
def spans(
    exporter: InMemorySpanExporter, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> InMemorySpanExporter:
    """The exporter, emptied once the tables are (this process's statements make spans too);
    OTEL_EXPORTER_OTLP_ENDPOINT turns the server's traces on (the provider above is kept:
    nothing is sent there)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    exporter.clear()
    return exporter


@pytest.fixture(params=["postgres", "bullmq", "rabbitmq", "sqs"])
async def backend(request, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    """The settings of a server on each queue backend (its own queue), the worker's variables."""
    name, queue_name = request.param, unique_queue_name()
    settings: dict[str, Any] = {"queue_backend": name, "task_queue_name": queue_name}
    if name == "bullmq":
        redis = request.getfixturevalue("redis_server")
        settings = redis_settings(redis, queue_name)
    elif name == "rabbitmq":
        settings["rabbitmq_url"] = url = request.getfixturevalue("rabbitmq")
        monkeypatch.setenv("FOREMAN_RABBITMQ_URL", url)
    elif name == "sqs":
        settings["sqs_endpoint_url"] = url = request.getfixturevalue("moto").url
        monkeypatch.setenv("FOREMAN_SQS_ENDPOINT_URL", url)
    yield settings
    if name == "bullmq":
        await obliterate(redis, queue_name)
    elif name == "rabbitmq":
        queue = RabbitMQQueue(url, base=queue_name)
        await (await queue.channel()).queue_delete(queue.queue_name(ORG_A))
        await queue.close()


# ---------------------------------------------------------------- handlers


async def work(ctx: TaskContext) -> int:
    return 1


def sync_work(ctx: TaskContext) -> None:
    # In a worker thread: a span of the handler's own is a child of the handler's span.
    with trace.get_tracer("tests").start_as_current_span("inside"):
        pass


async def boom(ctx: TaskContext) -> None:
    raise RuntimeError("boom")


HANDLERS = {"work": work, "sync_work": sync_work, "boom": boom}


# ---------------------------------------------------------------- what the spans say


def of_kind(spans: Sequence[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind]


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def handler_spans(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    """The worker's spans by task id."""
    consumers = of_kind(spans, SpanKind.CONSUMER)
    return {str(s.attributes["messaging.message.id"]): s for s in consumers}  # type: ignore[index]


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


async def stored_traceparents(database_url: str, task_ids: Sequence[str]) -> list[str | None]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id::text, traceparent FROM task WHERE id = ANY($1::uuid[])", task_ids
        )
    finally:
        await conn.close()
    by_id = {row["id"]: row["traceparent"] for row in rows}
    return [by_id[task_id] for task_id in task_ids]


async def run_worker(url: str, queue_backend: str) -> None:
    async with AsyncClient(url, KEY_A) as api:
        worker = Worker(
            api, HANDLERS, backend=queue_backend, claim_wait_s=0.2, handle_signals=False
        )  # type: ignore[arg-type]
        stats = await asyncio.wait_for(worker.run(burst=True), 60)
    assert (stats.completed, stats.failed) == (4, 1)


# ---------------------------------------------------------------- tests


async def test_one_trace_from_enqueue_to_the_handler_on_each_backend(spans, db_url, backend):
    with LiveApp(db_url, sweep_enabled=False, schedule_enabled=False, **backend) as live:
        # The blocking client in a thread: the test's event loop stays free.
        def enqueue() -> tuple[str, str, str]:
            with Client(live.url, KEY_A) as client:
                run = client.create_run({})
                one = client.enqueue_task(run.id, type="work", input_data=1)
                boom = client.enqueue_task(run.id, type="boom", input_data=0, max_retries=0)
                return run.id, one.id, boom.id

        run_id, one, failing = await asyncio.to_thread(enqueue)
        async with AsyncClient(live.url, KEY_A) as api:
            batch = await api.enqueue_tasks([TaskSpec(run_id, t, 2) for t in ("work", "sync_work")])
        async with httpx.AsyncClient(base_url=live.url, headers=HEADERS_A) as http:
            body = {"runId": run_id, "type": "work", "inputData": 3, "enqueue": True}
            untraced = (await http.post("/api/v1/tasks", json=body)).json()["id"]  # no header
        # An application may run its Worker inside a span: the handlers' spans are not its children.
        with trace.get_tracer("tests").start_as_current_span("application"):
            await run_worker(live.url, backend["queue_backend"])
    finished = spans.get_finished_spans()  # the server stopped: every span has ended

    sends = of_kind(finished, SpanKind.PRODUCER)
    assert [s.name for s in sends] == ["send work", "send boom", "send"]
    assert sends[2].attributes["messaging.batch.message_count"] == 2
    handlers = handler_spans(finished)
    task_ids = [one, failing, *(t.id for t in batch)]
    assert sorted(handlers) == sorted([*task_ids, untraced])
    assert handlers[untraced].parent is None  # a trace of its own, not the application's
    for task_id, send in zip(task_ids, [sends[0], sends[1], sends[2], sends[2]], strict=True):
        handler = handlers[task_id]
        # One trace: the handler's parent is the enqueue's span, read back from the task.
        assert handler.context.trace_id == send.context.trace_id
        assert parent_id(handler) == send.context.span_id
        assert handler.parent.is_remote
        assert handler.name == f"process {handler.attributes['messaging.destination.name']}"
    expected = [traceparent_of(send) for send in (*sends, sends[2])]
    assert await stored_traceparents(db_url, task_ids) == expected

    failed = handlers[failing]
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.attributes["exception.message"] for e in failed.events] == ["boom"]
    (inside,) = [s for s in finished if s.name == "inside"]
    assert parent_id(inside) == handlers[batch[1].id].context.span_id


async def test_server_spans_per_request_and_per_statement(spans, db_url):
    # The sweeper and the schedules' loop run (often): their statements make no span.
    intervals = {"sweep_interval_s": 0.05, "schedule_interval_s": 0.05}
    with LiveApp(db_url, **intervals) as live:

        def calls() -> str:
            with Client(live.url, KEY_A) as client:
                run = client.create_run({})
                task = client.enqueue_task(run.id, type="work", input_data=1)
                client.get_task(task.id)
                return task.id

        task_id = await asyncio.to_thread(calls)
    finished = spans.get_finished_spans()

    requests = of_kind(finished, SpanKind.SERVER)
    # Named by the route template, never the raw path (the task id would make each name unique).
    assert [s.name for s in requests] == [
        "POST /api/v1/runs",
        "POST /api/v1/tasks",
        "GET /api/v1/tasks/{task_id}",
    ]
    assert task_id not in "".join(str(s.attributes.get("http.route")) for s in requests)
    (send,) = of_kind(finished, SpanKind.PRODUCER)
    create = requests[1]
    assert parent_id(create) == send.context.span_id  # the client's traceparent header
    assert create.attributes["http.route"] == "/api/v1/tasks"

    statements = of_kind(finished, SpanKind.CLIENT)
    by_request = {
        r.context.span_id: [s for s in statements if parent_id(s) == r.context.span_id]
        for r in requests
    }
    assert all(by_request.values()), "a request without a statement span"
    assert sum(map(len, by_request.values())) == len(statements), "a statement of no request"
    (insert,) = by_request[create.context.span_id]
    assert insert.context.trace_id == send.context.trace_id
    system = insert.attributes.get("db.system") or insert.attributes.get("db.system.name")
    assert system == "postgresql"
    statement = insert.attributes.get("db.statement") or insert.attributes.get("db.query.text")
    assert "INSERT INTO task" in str(statement)
