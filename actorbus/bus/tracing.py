"""W3C Trace Context on the bus (PROTOCOL.md §14): the ``traceparent`` and ``tracestate``
headers a request may carry, checked for their shape, and the trace the current task
works for.

A replica takes a call's trace headers and runs its handler in that trace, so the calls
the handler makes carry them on; the jobs actor runs a job's slices in the trace of its
submit; the gateway takes them from HTTP and gives ``traceparent`` back. Nothing here
makes spans: a trace that reaches an actor is passed on unchanged (as the W3C
recommendation asks of a component that does not record), and its id goes into the log
lines of the calls in it.

They are not signed: they name a trace and grant nothing, so a caller may say what it
likes in its own request. A malformed one is dropped, never a reason to refuse a call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar, Token

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "current_trace",
    "trace_headers",
    "trace_id",
    "use_trace",
]

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
