"""Each web client's share of a gateway replica: at most ``gateway_client_concurrency``
requests at once (a server-sent events stream holds its place until it ends) and
``gateway_client_rate`` requests a second, in bursts of up to two seconds' worth; beyond
either, 429 with ``Retry-After``. So no client takes the whole gateway, whatever it
holds open or leaves unread; the gateway's own cap (``gateway_max_concurrency``) is what all share.

A request takes its client's share when it arrives and gives it back once its response
is written (:mod:`.shares`): a bearer token's key, or else the address it comes from; a
call made as a key anyone can make (an OIDC login's, a commune address, a hotkey) takes
that key's share too. Requests whose credentials the gateway refused count against a
share of their own per address (``refused:<address>``): once it is spent, that address's
requests are 429 before any signature or token is checked again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ...bus import RateLimited
from ...bus.lru import LRU

__all__ = ["Fairness"]

_CLIENTS_KEPT = 65536
"""Clients whose rate is remembered (the least recent forgotten: a fresh full bucket)."""


class Fairness:
    """The shares of one gateway replica."""

    def __init__(self, concurrency: int, rate: float) -> None:
        self.concurrency = concurrency
        self.rate = rate
        self.burst = max(1.0, 2.0 * rate)
        self._active: dict[str, int] = {}
        self._buckets: LRU[str, tuple[float, float]] = LRU(_CLIENTS_KEPT)
        """Per client: (tokens, when counted)."""

    def enter(self, who: str) -> Callable[[], None]:
        """Count a request of ``who``; returns what ends it (call it once). Raises
        :class:`RateLimited` if ``who`` is over its share."""
        held = self._active.get(who, 0)
        if held >= self.concurrency:
            raise RateLimited(
                f"you have {held} requests open at this gateway: at most {self.concurrency}"
            )
        tokens, now = self._tokens(who)
        self._refuse_if_spent(tokens)
        self._buckets[who] = (tokens - 1.0, now)
        self._active[who] = held + 1
        done = False

        def leave() -> None:
            nonlocal done
            if done:
                return
            done = True
            left = self._active.pop(who) - 1
            if left:
                self._active[who] = left

        return leave

    def check(self, who: str) -> None:
        """Raise :class:`RateLimited` if ``who`` has no request left this second."""
        self._refuse_if_spent(self._tokens(who)[0])

    def _refuse_if_spent(self, tokens: float) -> None:
        if tokens < 1.0:
            wait = (1.0 - tokens) / self.rate
            raise RateLimited(
                f"over {self.rate:g} requests a second at this gateway",
                retry_after=math.ceil(wait * 10) / 10,
            )

    def spend(self, who: str) -> None:
        """Count one request of ``who`` against its rate (none left: it stays at none)."""
        tokens, now = self._tokens(who)
        self._buckets[who] = (max(tokens - 1.0, 0.0), now)

    def _tokens(self, who: str) -> tuple[float, float]:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(who) or (self.burst, now)
        return min(self.burst, tokens + (now - stamp) * self.rate), now
