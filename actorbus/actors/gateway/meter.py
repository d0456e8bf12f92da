"""The gateway's ``/metrics``: its own HTTP figures, and every actor replica's on the bus.

The gateway counts its requests by route (the route's template, ``/{name}/{fn}``, never a
path a client chose) and status, times them, and gauges its open connections and the
server-sent event streams it is sending. A scrape adds what every replica on the bus says
on ``$SRV.STATS`` (:mod:`actorbus.client.stats`), as the node's supervisor exports its
own replicas' (:mod:`actorbus.node.metrics`), so one scrape of the gateway sees the
cluster.

Who may scrape: anyone who reaches a gateway bound to loopback (the default); when it
listens wider, an identity the policy lets call ``<gateway>/metrics`` (a bearer token of a
role that allows it, or an admin's).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...bus.figures import LATENCY_BUCKETS
from ...client import Client
from ...client.stats import replica_figures
from ...node.metrics import Snapshot, families

__all__ = ["Meter", "Metered"]


class Meter:
    """One gateway replica's HTTP figures (``open_connections``: a count it reads)."""

    def __init__(self, open_connections: Callable[[], int], replica: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Replicas share a port, so a scrape reaches one of them: each keeps its own series.
        self._replica = str(replica)
        requests = Counter(
            "actorbus_gateway_requests",
            "HTTP requests answered, by route and status.",
            ["replica", "route", "status"],
            registry=self.registry,
        )
        seconds = Histogram(
            "actorbus_gateway_request_seconds",
            "Time from a request's arrival to the end of its answer, by route.",
            ["replica", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        streams = Gauge(
            "actorbus_gateway_sse_streams",
            "Event streams being sent.",
            ["replica"],
            registry=self.registry,
        )
        connections = Gauge(
            "actorbus_gateway_open_connections",
            "Open HTTP connections.",
            ["replica"],
            registry=self.registry,
        )
        connections.labels(self._replica).set_function(lambda: float(open_connections()))
        self.streams: Gauge = streams.labels(self._replica)
        self._requests = requests
        self._seconds = seconds

    def answered(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self._requests.labels(self._replica, route, str(status)).inc()
        self._seconds.labels(self._replica, route).observe(seconds)

    async def render(self, client: Client) -> bytes:
        """This gateway's figures and every replica's on the bus, in Prometheus's format."""
        figures = await replica_figures(client.nc, client.vouching)
        replicas = CollectorRegistry(auto_describe=False)
        rows = [
            (f.entry.node, f.entry.name, f.entry.replica, msgspec.to_builtins(f.endpoints))
            for f in figures
        ]
        replicas.register(Snapshot(families(rows)))
        return generate_latest(self.registry) + generate_latest(replicas)


class Metered:
    """ASGI middleware that counts and times each HTTP request in a :class:`Meter`."""

    def __init__(self, app: ASGIApp, meter: Meter) -> None:
        self.app = app
        self.meter = meter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500  # what a request that ends without an answer counts as
        streaming = False

        async def sending(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = int(message["status"])
                kind = dict(message.get("headers") or []).get(b"content-type", b"")
                if kind.startswith(b"text/event-stream"):
                    streaming = True
                    self.meter.streams.inc()
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if streaming:
                self.meter.streams.dec()
            route = getattr(scope.get("route"), "path", "") or "other"
            self.meter.answered(route, status, time.monotonic() - started)
