"""Traces (README "Traces"): W3C trace context from the enqueue to the handler, without cost when off.

Nothing here imports OpenTelemetry. A process turns traces on with ``configure`` (the server and
``foreman worker`` do, when OTEL_* variables ask for them and the ``[otel]`` extra is installed);
the SDK's client and Worker make spans whenever the process has an OpenTelemetry tracer provider
(``tracing_on``): the one ``configure`` set, or the application's own. Otherwise ``enqueue_span``
and ``handler_span`` are one shared empty context manager, and OpenTelemetry is never imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foreman.client._base import TaskSpec
    from foreman.models import Task

logger = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
# Any of these set (and OTEL_TRACES_EXPORTER not "none") asks a Foreman process for traces.
EXPORTER_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
)
# W3C Trace Context, section 3.2: version-traceid-parentid-flags, lowercase hex; a later version
# may append fields after a dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_MAX_TRACEPARENT_CHARS = 512  # a later version's extra fields: more is not a header we keep
_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()


def valid_traceparent(value: str | None) -> str | None:
    """value as a version-00 traceparent when it is a valid W3C one, else None (ignored).

    Invalid per the recommendation: version ff, an all-zero trace or parent id, upper-case hex,
    a version 00 with more fields. A later version is read as version 00 (its first four fields,
    the sampled flag only).
    """
    if value is None or len(value) > _MAX_TRACEPARENT_CHARS:
        return None
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, trace_id, parent_id, flags, more = match.groups()
    if version == "ff" or (version == "00" and more is not None):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    if version != "00":
        flags = "01" if int(flags, 16) & 1 else "00"
    return f"00-{trace_id}-{parent_id}-{flags}"


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces: an exporter or its endpoint is set, and
    neither OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none turns them off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in EXPORTER_VARIABLES)


def configure(service_name: str) -> bool:
    """Turn traces on in this process when requested (and installed): the tracer provider the
    OTEL_* variables describe, unless the process has one already. Whether traces are on."""
    if not requested():
        return False
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        logger.warning("OTEL_* variables ask for traces, but foreman[otel] is not installed")
        return False
    if not tracing_on():  # else the application's, opentelemetry-instrument's or a test's
        from foreman import _otel

        _otel.configure_sdk(service_name)
    return True


def tracing_on() -> bool:
    """Whether the process has an OpenTelemetry tracer provider (never imports OpenTelemetry:
    a process that never did has none; the API's default proxy makes no span)."""
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return False
    provider = api.get_tracer_provider()
    return not isinstance(provider, api.ProxyTracerProvider | api.NoOpTracerProvider)


def enqueue_span(specs: Sequence[TaskSpec]) -> AbstractContextManager[str | None]:
    """``with enqueue_span(specs) as traceparent``: the producer span of one enqueue call and the
    traceparent its requests carry; None (and no span) while traces are off."""
    if not tracing_on():
        return _NO_SPAN
    from foreman import _otel

    return _otel.producer_span(specs)


def handler_span(task: Task, worker_id: str) -> AbstractContextManager[None]:
    """The consumer span a handler runs in, child of the enqueue's span (task.traceparent); an
    exception leaving it marks it failed. Nothing while traces are off."""
    if not tracing_on():
        return _NO_SPAN
    from foreman import _otel

    return _otel.consumer_span(task, worker_id)
