"""The latency histograms replicas send on ``$SRV.STATS`` (PROTOCOL.md §7): their bucket
bounds, shared by the replicas that count (:mod:`actorbus.host.stats`), the supervisor
that exports them (:mod:`actorbus.node.metrics`) and the readers that estimate quantiles
from them (`actor top`)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["LATENCY_BUCKETS", "quantile"]

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip
"""Upper bounds (seconds, inclusive) of the buckets; one more bucket past the last counts
the rest."""


def quantile(counts: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0 to 1) of per-bucket ``counts`` (not cumulative), interpolated
    within its bucket as Prometheus's ``histogram_quantile`` does; ``None`` for no
    observations. Past the last bound, the last bound."""
    total = sum(counts)
    if total <= 0:
        return None
    rank, seen, lower = q * total, 0.0, 0.0
    for bound, count in zip(LATENCY_BUCKETS, counts, strict=False):
        if count and seen + count >= rank:
            return lower + (bound - lower) * (rank - seen) / count
        seen += count
        lower = bound
    return LATENCY_BUCKETS[-1]
