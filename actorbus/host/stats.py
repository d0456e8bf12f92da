"""What a replica counts, per function: answers by status, time in the queue and in the
handler as histograms, calls in flight, stream chunks, requests dropped unread.

The counts are the replica's own and cheap to keep (a few integer updates and two bisects
per call). They go out on ``$SRV.STATS`` (PROTOCOL.md §7), where ``nats micro stats``
and the node's supervisor read them; the supervisor turns its replicas' counts into
Prometheus metrics (:mod:`actorbus.node.metrics`). Nothing here names a caller.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from ..bus.figures import LATENCY_BUCKETS

__all__ = ["OTHER", "FunctionStats", "Histogram"]

log = logging.getLogger("actorbus.host")

OTHER = "_other"
"""The stats entry for requests to no served function, and for dropped requests."""


class Histogram:
    """Observations counted by :data:`LATENCY_BUCKETS` (not cumulative), and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def data(self) -> dict[str, Any]:
        return {"counts": self.counts, "sum": self.total}


class FunctionStats:
    """Counters one function's requests update (the pipeline's replies own them).

    ``num_requests`` counts answered requests, ``num_errors`` those answered with a status
    that is not 2xx, ``statuses`` each status, ``dropped`` requests dropped unread (no
    reply subject, or one that is not an inbox); ``queued`` and ``handled`` time the calls
    that ran (from arrival to their start, and from their start to their answer),
    ``in_flight`` counts those running now and ``chunks`` the stream chunks sent; ``gauges``
    are the replica's own figures (on :data:`OTHER` only).
    """

    __slots__ = (
        "chunks",
        "dropped",
        "figures",
        "gauges",
        "handled",
        "in_flight",
        "last_error",
        "num_errors",
        "num_requests",
        "processing_time",
        "queued",
        "statuses",
    )

    def __init__(self) -> None:
        self.num_requests = 0
        self.num_errors = 0
        self.processing_time = 0
        self.last_error = ""
        self.statuses: dict[int, int] = {}
        self.dropped = 0
        self.in_flight = 0
        self.chunks = 0
        self.queued = Histogram()
        self.handled = Histogram()
        self.gauges: dict[str, int] = {}
        self.figures: Callable[[], dict[str, float]] | None = None
        """The actor's own counts (on :data:`OTHER` only: ``Actor.figures``)."""

    def record(self, status: int, elapsed_ns: int, error: str) -> None:
        """Count one answered request; ``error`` must already be short and printable."""
        self.num_requests += 1
        self.processing_time += elapsed_ns
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 400:
            self.num_errors += 1
            self.last_error = f"{status} {error}"

    def ran(self, queued: float, handled: float) -> None:
        """Time one call that ran: seconds waiting for a worker, then running to its answer."""
        self.queued.observe(queued)
        self.handled.observe(handled)

    def data(self) -> dict[str, Any]:
        return {
            "status": {str(code): n for code, n in sorted(self.statuses.items())},
            "dropped": self.dropped,
            "in_flight": self.in_flight,
            "chunks": self.chunks,
            "queue_seconds": self.queued.data(),
            "handler_seconds": self.handled.data(),
            **self.gauges,
            **({"figures": _figures(self.figures)} if self.figures else {}),
        }


_FIGURE = re.compile(r"[a-z_]{1,48}")


def _figures(source: Callable[[], dict[str, float]]) -> dict[str, float]:
    """What ``source`` counts, the well-named numbers only (an actor's bug never breaks
    ``$SRV.STATS``)."""
    try:
        counted = source()
    except Exception as exc:
        log.warning("figures() raised %s: its counts are left out", type(exc).__name__)
        return {}
    return {
        k: float(v)
        for k, v in counted.items()
        if isinstance(k, str) and _FIGURE.fullmatch(k) and isinstance(v, int | float)
    }
