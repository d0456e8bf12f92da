"""A node's Prometheus scrape point: what its replicas count, as metrics.

The supervisor answers ``GET /metrics`` on ``metrics_host:metrics_port`` (loopback and
9464 by default; a taken port falls back to a free one, which `actor up` prints). Each
scrape asks every replica of the node for its ``$SRV.STATS`` (:mod:`actorbus.host.stats`)
and renders them with ``prometheus-client``. A replica keeps its own counts, so each
series carries the ``actor``, ``fn`` and ``replica`` labels (a replica's restart resets
only its own series, which ``rate()`` understands) and the ``node``. No label names a
caller: their values are the node's actor names, their functions, status codes and
replica indexes.

The HTTP side is deliberately small: one request per connection, its head at most 8 KiB
and 5 s, a few connections at a time.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

import anyio
import anyio.abc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..bus import Unavailable
from ..bus.figures import LATENCY_BUCKETS
from ..client.specs import ReplicaStatus
from .supervisor import Node

__all__ = ["Row", "Snapshot", "families", "node_families", "serve_metrics"]

log = logging.getLogger("actorbus.node")

_HEAD_LIMIT = 8192
_FIGURE = re.compile(r"[a-z_]{1,48}")
_HEAD_TIMEOUT = 5.0
_CONNECTIONS = 8

Row = tuple[str, str, int, list[dict[str, Any]] | None]
"""A replica as metrics see it: its node, actor and index, and its ``$SRV.STATS``
endpoints (``None``: it did not answer)."""


def families(rows: Iterable[Row]) -> list[Metric]:
    """The metric families of replicas' figures (what the node and the gateway export)."""
    per_fn = ["node", "actor", "fn", "replica"]
    per_replica = ["node", "actor", "replica"]
    calls = CounterMetricFamily(
        "actorbus_calls", "Calls answered, by status.", labels=[*per_fn, "status"]
    )
    queued = HistogramMetricFamily(
        "actorbus_call_queue_seconds", "Time calls waited for a worker.", labels=per_fn
    )
    handled = HistogramMetricFamily(
        "actorbus_call_handler_seconds",
        "Time from a worker taking a call to its answer.",
        labels=per_fn,
    )
    in_flight = GaugeMetricFamily("actorbus_calls_in_flight", "Calls running now.", labels=per_fn)
    chunks = CounterMetricFamily("actorbus_stream_chunks", "Stream chunks sent.", labels=per_fn)
    dropped = CounterMetricFamily(
        "actorbus_requests_dropped", "Requests dropped unread (no inbox to answer).", labels=per_fn
    )
    up = GaugeMetricFamily(
        "actorbus_replica_up", "1 if the replica runs and answers.", labels=per_replica
    )
    waiting = GaugeMetricFamily(
        "actorbus_calls_queued", "Calls waiting for a worker.", labels=per_replica
    )
    stuck = GaugeMetricFamily(
        "actorbus_stuck_threads", "Sync handler threads past their deadline.", labels=per_replica
    )
    own: dict[str, GaugeMetricFamily] = {}  # what actors count themselves (Actor.figures)
    for node, actor, index, endpoints in rows:
        replica = [node, actor, str(index)]
        up.add_metric(replica, 1 if endpoints is not None else 0)
        for endpoint in endpoints or []:
            data = endpoint.get("data") or {}
            fn = [node, actor, str(endpoint.get("name", "")), str(index)]
            for code, count in _items(data.get("status")):
                calls.add_metric([*fn, code], count)
            for family, key in ((queued, "queue_seconds"), (handled, "handler_seconds")):
                if (histogram := _histogram(data.get(key))) is not None:
                    family.add_metric(fn, *histogram)
            in_flight.add_metric(fn, _number(data.get("in_flight")))
            chunks.add_metric(fn, _number(data.get("chunks")))
            dropped.add_metric(fn, _number(data.get("dropped")))
            if "queued" in data:
                waiting.add_metric(replica, _number(data["queued"]))
            if "stuck_threads" in data:
                stuck.add_metric(replica, _number(data["stuck_threads"]))
            figures = data.get("figures")
            for name, value in figures.items() if isinstance(figures, dict) else ():
                if isinstance(name, str) and _FIGURE.fullmatch(name) and not _ours(name):
                    gauge = own.get(name)
                    if gauge is None:
                        gauge = own[name] = GaugeMetricFamily(
                            f"actorbus_{name}",
                            f"{name} (the actor's own count).",
                            labels=per_replica,
                        )
                    gauge.add_metric(replica, _number(value))
    fixed = [calls, queued, handled, in_flight, chunks, dropped, up, waiting, stuck]
    return fixed + [own[name] for name in sorted(own)]


def _ours(name: str) -> bool:
    """Whether a figure called ``name`` would clash with our metrics or their samples
    (``calls_total``, ``..._bucket``): then it is left out."""
    return any(name == o or name.startswith(o + "_") for o in _OURS)


def _our_names() -> frozenset[str]:
    return frozenset(f.name.removeprefix("actorbus_") for f in node_families("", []))


def node_families(
    node: str, measured: list[tuple[ReplicaStatus, list[dict[str, Any]] | None]]
) -> list[Metric]:
    """A node's measured replicas (:meth:`Node.measured`): :func:`families`, and what only
    its supervisor knows of them (restarts, memory)."""
    per_replica = ["node", "actor", "replica"]
    restarts = CounterMetricFamily(
        "actorbus_replica_restarts", "Replica restarts.", labels=per_replica
    )
    memory = GaugeMetricFamily(
        "actorbus_replica_resident_memory_bytes",
        "Resident memory of the replica.",
        labels=per_replica,
    )
    for status, _ in measured:
        replica = [node, status.actor, str(status.replica)]
        restarts.add_metric(replica, status.restarts)
        if status.rss is not None:
            memory.add_metric(replica, status.rss)
    rows = [(node, s.actor, s.replica, endpoints) for s, endpoints in measured]
    return [*families(rows), restarts, memory]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _items(value: Any) -> Iterator[tuple[str, float]]:
    if isinstance(value, dict):
        for code, count in value.items():
            if isinstance(code, str) and code.isdigit() and len(code) == 3:
                yield code, _number(count)


def _histogram(value: Any) -> tuple[list[tuple[str, float]], float] | None:
    """Prometheus buckets (cumulative, with ``+Inf``) and the sum, from a replica's
    per-bucket counts; ``None`` if they are not what :mod:`~actorbus.host.stats` sends."""
    if not isinstance(value, dict):
        return None
    counts = value.get("counts")
    if not isinstance(counts, list) or len(counts) != len(LATENCY_BUCKETS) + 1:
        return None
    buckets, total = [], 0.0
    for bound, count in zip([*(f"{b:g}" for b in LATENCY_BUCKETS), "+Inf"], counts, strict=True):
        total += _number(count)
        buckets.append((bound, total))
    return buckets, _number(value.get("sum"))


class Snapshot:
    """A collector of families gathered already (a scrape's, rendered once)."""

    def __init__(self, found: Iterable[Metric]) -> None:
        self._found = list(found)

    def collect(self) -> Iterator[Metric]:
        yield from self._found


async def render(node: Node) -> bytes:
    """The node's metrics in Prometheus's text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(node_families(node.name, await node.measured())))
    return generate_latest(registry)


async def serve_metrics(
    node: Node,
    host: str,
    port: int,
    *,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``GET /metrics`` for ``node`` until cancelled; started with its URL. A taken
    ``port`` is said once and a free one taken instead; raises :class:`Unavailable` if
    ``host`` cannot be listened on at all."""
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        if port == 0:
            raise Unavailable(f"metrics cannot listen on {host}: {exc.strerror}") from None
        log.warning(
            "metrics: %s:%d is taken (%s): serving them on a free port", host, port, exc.strerror
        )
        listener = await anyio.create_tcp_listener(local_host=host, local_port=0)
    async with listener:
        local = listener.listeners[0].extra(anyio.abc.SocketAttribute.local_address)
        assert isinstance(local, tuple)  # an IP socket's (host, port, ...)
        address, bound = str(local[0]), int(local[1])
        where = f"[{address}]" if ":" in address else address
        task_status.started(f"http://{where}:{bound}/metrics")
        limiter = anyio.CapacityLimiter(_CONNECTIONS)

        async def handle(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                try:
                    limiter.acquire_nowait()  # past a few at once, a connection is closed
                except anyio.WouldBlock:
                    return
                try:
                    await _answer(node, stream)
                finally:
                    limiter.release()

        await listener.serve(handle)


async def _answer(node: Node, stream: anyio.abc.SocketStream) -> None:
    head = b""
    with anyio.move_on_after(_HEAD_TIMEOUT):
        while b"\r\n\r\n" not in head and len(head) <= _HEAD_LIMIT:
            try:
                head += await stream.receive(4096)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return
    line = head.split(b"\r\n", 1)[0].split()
    if b"\r\n\r\n" not in head or len(line) != 3:
        status, body, kind = "400 Bad Request", b"bad request\n", "text/plain"
    elif line[0] != b"GET" or line[1].split(b"?")[0] != b"/metrics":
        status, body, kind = "404 Not Found", b"GET /metrics\n", "text/plain"
    else:
        status, body, kind = "200 OK", await render(node), CONTENT_TYPE_LATEST
    response = (
        f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    with contextlib.suppress(anyio.BrokenResourceError, OSError):  # the scraper left
        await stream.send(response)


_OURS = _our_names()
"""The names actorbus's own metrics take (from the families themselves)."""
