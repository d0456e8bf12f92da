"""A web request's W3C trace (``traceparent``, ``tracestate``) goes on to the actor calls
the gateway makes for it (:mod:`actorbus.bus.tracing`), and its ``traceparent`` comes
back on the response, so a web client can find its request in the actors' logs."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...bus.tracing import TRACEPARENT, TRACESTATE, spans, trace_headers, use_trace

__all__ = ["Traced"]

_NAMES = {TRACEPARENT.encode(), TRACESTATE.encode()}


class Traced:
    """ASGI middleware: each HTTP request runs in the trace its headers name, if any."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = {
            name.decode(): value.decode("latin-1")
            for name, value in scope.get("headers") or []
            if name in _NAMES
        }
        trace = trace_headers(given)
        recorder = spans()
        span = None
        if recorder is not None:  # spans on: the request's span is its calls' parent
            span = recorder.start(f"{scope.get('method', '')} request", "server", trace)
            trace = recorder.headers(span)
        if not trace:
            await self.app(scope, receive, send)
            return
        use_trace(trace)
        parent = trace[TRACEPARENT].encode()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*(message.get("headers") or []), (TRACEPARENT.encode(), parent)]
                message = {**message, "headers": headers}
                if span is not None:
                    span.set_attribute("http.response.status_code", message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if span is not None:  # named by its route's template, never by a chosen path
                route = getattr(scope.get("route"), "path", "") or "other"
                span.update_name(f"{scope.get('method', '')} {route}")
                span.end()
