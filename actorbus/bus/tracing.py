"""W3C Trace Context on the bus (PROTOCOL.md §14): the ``traceparent`` and ``tracestate``
headers a request may carry, checked for their shape, and the trace the current task
works for.

A replica takes a call's trace headers and runs its handler in that trace, so the calls
the handler makes carry them on; the jobs actor runs a job's slices in the trace of its
submit; the gateway takes them from HTTP and gives ``traceparent`` back. With spans off
(the default) a trace that reaches an actor is passed on unchanged, as the W3C
recommendation asks of a component that does not record, and its id goes into the log
lines of the calls in it. With spans on (:func:`spans`), each hop records its span and
passes on its own span as the parent.

They are not signed: they name a trace and grant nothing, so a caller may say what it
likes in its own request. A malformed one is dropped, never a reason to refuse a call.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Any

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "Spans",
    "current_trace",
    "spans",
    "trace_headers",
    "trace_id",
    "use_trace",
]

log = logging.getLogger("actorbus.bus")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_PARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_STATE = re.compile(r"[\x20-\x2b\x2d-\x7e]*(,[\x20-\x2b\x2d-\x7e]*){0,31}")
_STATE_LIMIT = 512
_NONE: dict[str, str] = {}

_TRACE: ContextVar[dict[str, str]] = ContextVar("actorbus_trace", default=_NONE)


def trace_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The well-formed trace headers among ``headers`` (a ``tracestate`` only with a
    ``traceparent``); empty if there are none."""
    if not headers:
        return _NONE
    parent = headers.get(TRACEPARENT)
    if parent is None or len(parent) != 55 or not _PARENT.fullmatch(parent):
        return _NONE
    state = headers.get(TRACESTATE)
    if state is None or len(state) > _STATE_LIMIT or not _STATE.fullmatch(state):
        return {TRACEPARENT: parent}
    return {TRACEPARENT: parent, TRACESTATE: state}


def trace_id(headers: Mapping[str, str]) -> str:
    """The trace id (32 hex) of well-formed ``headers``; '' without one."""
    parent = headers.get(TRACEPARENT, "")
    return parent[3:35] if parent else ""


def current_trace() -> dict[str, str]:
    """The trace headers of what this task works for (empty: none)."""
    return _TRACE.get()


def use_trace(headers: dict[str, str]) -> Token[dict[str, str]]:
    """Work for the trace ``headers`` (well-formed, :func:`trace_headers`) from now on in
    this task and the tasks it starts."""
    return _TRACE.set(headers)


class Spans:
    """Spans sent with the OpenTelemetry SDK over OTLP (the ``otel`` extra), as the
    standard ``OTEL_*`` variables configure it; see :func:`spans`."""

    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", "actorbus")}
        )
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer("actorbus")
        self._propagator = TraceContextTextMapPropagator()
        self.kinds = {
            "client": SpanKind.CLIENT,
            "server": SpanKind.SERVER,
            "internal": SpanKind.INTERNAL,
        }

    def start(
        self,
        name: str,
        kind: str,
        parent: Mapping[str, str] | Any,
        start_ns: int | None = None,
        **attributes: str | int,
    ) -> Any:
        """A started span: a child of ``parent`` (trace headers, or a span)."""
        from opentelemetry import trace

        if isinstance(parent, Mapping):
            context = self._propagator.extract(dict(parent))
        else:
            context = trace.set_span_in_context(parent)
        return self._tracer.start_span(
            name, context, kind=self.kinds[kind], start_time=start_ns, attributes=attributes
        )

    def headers(self, span: Any) -> dict[str, str]:
        """The trace headers that make ``span`` the parent of what a call carrying them
        does."""
        from opentelemetry import trace

        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, trace.set_span_in_context(span))
        return trace_headers(carrier)

    def flush(self) -> None:
        """Send what is buffered (a process that ends)."""
        self._provider.force_flush()


_SPANS: list[Spans | None] = []


def spans() -> Spans | None:
    """The process's span recorder, or ``None`` (then nothing is recorded, and nothing
    is done for it): on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its traces variant) is
    set, ``OTEL_SDK_DISABLED`` is not ``true`` and the ``otel`` extra is installed."""
    if not _SPANS:
        wanted = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        recorder = None
        if wanted and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true":
            try:
                recorder = Spans()
            except ImportError:
                log.warning(
                    "OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not "
                    "installed: pip install 'actorbus[otel]'"
                )
        _SPANS.append(recorder)
    return _SPANS[0]
