"""A pace per key: ``burst`` at once, then ``rate`` a second (a token bucket per key), for
keys a caller chooses, so at most ``kept`` of them are remembered (the least recent
forgotten: a fresh, full bucket)."""

from __future__ import annotations

import time

from .lru import LRU

__all__ = ["Pace"]


class Pace:
    """Token buckets of ``burst`` tokens, each refilled at ``rate`` tokens a second."""

    def __init__(self, rate: float, burst: float, kept: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: LRU[str, tuple[float, float]] = LRU(kept)
        """Per key: (tokens, when counted)."""

    def wait(self, key: str) -> float:
        """Seconds until ``key`` has a token (0: it has one now)."""
        tokens, _ = self._tokens(key)
        return max(0.0, (1.0 - tokens) / self.rate)

    def take(self, key: str) -> None:
        """Spend one of ``key``'s tokens (none left: it stays at none)."""
        tokens, now = self._tokens(key)
        self._buckets[key] = (max(tokens - 1.0, 0.0), now)

    def _tokens(self, key: str) -> tuple[float, float]:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(key) or (self.burst, now)
        return min(self.burst, tokens + (now - stamp) * self.rate), now
