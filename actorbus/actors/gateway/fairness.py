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
from collections.abc import Callable

from ...bus import RateLimited
from ...bus.pace import Pace

__all__ = ["Fairness"]

_CLIENTS_KEPT = 65536
"""Clients whose rate is remembered (the least recent forgotten: a fresh full bucket)."""


class Fairness:
    """The shares of one gateway replica."""

    def __init__(self, concurrency: int, rate: float) -> None:
        self.concurrency = concurrency
        self.rate = rate
        self._active: dict[str, int] = {}
        self._pace = Pace(rate, max(1.0, 2.0 * rate), _CLIENTS_KEPT)

    def enter(self, who: str) -> Callable[[], None]:
        """Count a request of ``who``; returns what ends it (call it once). Raises
        :class:`RateLimited` if ``who`` is over its share."""
        held = self._active.get(who, 0)
        if held >= self.concurrency:
            raise RateLimited(
                f"you have {held} requests open at this gateway: at most {self.concurrency}"
            )
        self.check(who)
        self._pace.take(who)
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
        wait = self._pace.wait(who)
        if wait > 0:
            raise RateLimited(
                f"over {self.rate:g} requests a second at this gateway",
                retry_after=math.ceil(wait * 10) / 10,
            )

    def spend(self, who: str) -> None:
        """Count one request of ``who`` against its rate (none left: it stays at none)."""
        self._pace.take(who)
