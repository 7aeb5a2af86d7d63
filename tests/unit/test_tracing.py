"""foreman/tracing.py without a span: W3C parsing, when OTEL_* variables ask for traces, which
exporters they name, and that a process with traces off never imports OpenTelemetry's SDK."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from foreman import _otel, errors, tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (f"00-{TRACE_ID}-{PARENT_ID}-01", f"00-{TRACE_ID}-{PARENT_ID}-01"),
        (f" 00-{TRACE_ID}-{PARENT_ID}-00\t", f"00-{TRACE_ID}-{PARENT_ID}-00"),  # OWS around
        (f"01-{TRACE_ID}-{PARENT_ID}-03-later", f"00-{TRACE_ID}-{PARENT_ID}-01"),
        (f"01-{TRACE_ID}-{PARENT_ID}-02", f"00-{TRACE_ID}-{PARENT_ID}-00"),
        (None, None),
        (f"00-{TRACE_ID}-{PARENT_ID}-1", None),
        (f"00_{TRACE_ID}_{PARENT_ID}_01", None),
        (f"0g-{TRACE_ID}-{PARENT_ID}-01", None),
    ],
)
def test_valid_traceparent(value, kept):
    assert tracing.valid_traceparent(value) == kept


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),  # names the service, exports nowhere
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
    ],
)
def test_requested(environ, wanted):
    assert tracing.requested(environ) is wanted


@pytest.mark.parametrize(
    ("environ", "kinds"),
    [
        ({"OTEL_TRACES_EXPORTER": "console"}, [ConsoleSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({}, [GrpcExporter]),  # the SDK's default protocol
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, [HttpExporter]),
        (
            {"OTEL_TRACES_EXPORTER": "otlp, console", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
            [GrpcExporter, ConsoleSpanExporter],
        ),
    ],
)
def test_span_exporters(environ, kinds):
    exporters = _otel.span_exporters(environ)
    try:
        assert [type(e) for e in exporters] == kinds
    finally:
        for exporter in exporters:
            exporter.shutdown()


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "no span exporter 'jaeger'"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "Unsupported OTLP protocol 'http/json'"),
    ],
)
def test_span_exporters_name_what_they_cannot_make(environ, named):
    with pytest.raises(errors.ForemanError, match=named):
        _otel.span_exporters(environ)


# Run in a fresh interpreter: this one may have imported OpenTelemetry for other tests.
_TRACES_OFF = """
import sys
from foreman import AsyncClient, Client, TaskSpec, Worker, tracing
from foreman.models import Task
with tracing.enqueue_span([TaskSpec("r", "t", 1)]) as traceparent:
    assert traceparent is None
task = Task("t", "r", "o", "t", "running", 1, None, 0, 3, 0, 1, 0, 0)
with tracing.handler_span(task, "w"):
    pass
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
from foreman.server.app import create_app
from foreman.settings import Settings
app = create_app(Settings(database_url="postgresql://nobody@127.0.0.1:9/none"))
print(app.foreman_traced, tracing.tracing_on())
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "foreman._otel",
      "foreman.server.traces", "opentelemetry.instrumentation.asyncpg"))))
"""


def test_traces_off_cost_no_import_of_opentelemetry():
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    answer = subprocess.run(
        [sys.executable, "-c", _TRACES_OFF], env=environ, capture_output=True, text=True, check=True
    )
    # The SDK's client and worker: nothing at all. The server: Litestar itself imports the API
    # when it is installed (its OpenTelemetry plugin's check), but nothing of Foreman's traces.
    assert answer.stdout.splitlines() == ["[]", "None False", "[]"], answer.stderr
