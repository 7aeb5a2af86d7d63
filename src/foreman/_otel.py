"""The OpenTelemetry side of foreman/tracing.py: imported only once traces are on.

Spans follow OpenTelemetry's messaging conventions: the client's enqueue is a PRODUCER span
``send <type>``, the worker's handler a CONSUMER span ``process <type>`` whose parent is the
enqueue's span, read from the traceparent the task was created with.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from foreman import errors

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from foreman.client._base import TaskSpec
    from foreman.models import Task

# The task's stored context is W3C whatever OTEL_PROPAGATORS says: the API carries traceparent.
_W3C = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"  # the W3C header and carrier key
_EXPORTER_GROUP = "opentelemetry_traces_exporter"
# As the SDK's own configurator reads "otlp": by OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL, grpc unset.
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
MESSAGING_SYSTEM = "foreman"


def _tracer() -> trace.Tracer:
    return trace.get_tracer("foreman")


# ---------------------------------------------------------------- the SDK from OTEL_* variables


def configure_sdk(service_name: str, environ: Mapping[str, str] = os.environ) -> None:
    """Set the tracer provider the OTEL_* variables describe: exporters of OTEL_TRACES_EXPORTER
    (default otlp), the sampler of OTEL_TRACES_SAMPLER, the resource of OTEL_SERVICE_NAME and
    OTEL_RESOURCE_ATTRIBUTES (service_name when neither names one)."""
    # Here: spans alone need only the API (an application may bring another SDK).
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    provider = TracerProvider(
        resource=Resource.create({} if named else {SERVICE_NAME: service_name})
    )
    for exporter in span_exporters(environ):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def span_exporters(environ: Mapping[str, str] = os.environ) -> list[SpanExporter]:
    """The exporters named by OTEL_TRACES_EXPORTER (a comma list, default otlp; none: none), each
    found by its entry point like the SDK's configurator finds it."""
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    exporters = []
    for name in filter(None, names):
        if name == "none":
            continue
        if name == "otlp":
            protocol = (
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc"
            ).strip()
            if protocol not in _OTLP_BY_PROTOCOL:
                raise errors.ForemanError(
                    f"Unsupported OTLP protocol {protocol!r} (grpc, http/protobuf)"
                )
            name = _OTLP_BY_PROTOCOL[protocol]
        found = importlib.metadata.entry_points(group=_EXPORTER_GROUP, name=name)
        if not found:
            raise errors.ForemanError(
                f"OTEL_TRACES_EXPORTER: no span exporter {name!r} is installed"
                " (foreman[otel] brings otlp; console is the SDK's)"
            )
        exporters.append(next(iter(found)).load()())
    return exporters


# ---------------------------------------------------------------- spans of the client and worker


def _send_attributes(specs: Sequence[TaskSpec]) -> tuple[str, dict[str, Any]]:
    types = {spec.type for spec in specs}
    runs = {spec.run_id for spec in specs}
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "enqueue",
    }
    name = "send"
    if len(types) == 1:
        (task_type,) = types
        attributes["messaging.destination.name"] = task_type
        name = f"send {task_type}"
    if len(specs) != 1:
        attributes["messaging.batch.message_count"] = len(specs)
    if len(runs) == 1:
        attributes["foreman.run.id"] = str(next(iter(runs)))
    return name, attributes


@contextlib.contextmanager
def producer_span(specs: Sequence[TaskSpec]) -> Iterator[str | None]:
    """The enqueue's span, current while its requests are sent; yields its traceparent."""
    name, attributes = _send_attributes(specs)
    with _tracer().start_as_current_span(name, kind=trace.SpanKind.PRODUCER, attributes=attributes):
        carrier: dict[str, str] = {}
        _W3C.inject(carrier)
        yield carrier.get(TRACEPARENT)


@contextlib.contextmanager
def consumer_span(task: Task, worker_id: str) -> Iterator[None]:
    """The handler's span, current while it runs (sync handlers' threads copy the context)."""
    carrier = {} if task.traceparent is None else {TRACEPARENT: task.traceparent}
    # Without a traceparent, an empty context: a trace of its own, not one the worker runs in.
    parent = _W3C.extract(carrier)
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "process",
        "messaging.destination.name": task.type,
        "messaging.message.id": task.id,
        "foreman.worker.id": worker_id,
        "foreman.run.id": task.run_id,
        "foreman.task.attempt": task.attempt,
    }
    with _tracer().start_as_current_span(
        f"process {task.type}", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ):
        yield
