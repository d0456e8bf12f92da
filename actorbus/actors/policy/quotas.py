"""How fast: quota leases. ``lease(key, want)`` hands a host up to ``want`` calls of
``key``'s budget for the current window, never more than the budget in total; ``release``
takes back what a host did not use. The counters live in this process: a restart
mid-window forgets what was lent in that window (at most one window's budget is lent
twice)."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from ...bus import Forbidden
from ...runtime.policy import Grant
from .store import PolicyStore

__all__ = ["Quotas"]


class Quotas(PolicyStore):
    """The lease calls hosts make (registered actors and admins only)."""

    def __init__(self) -> None:
        self._granted: dict[tuple[str, int], int] = {}
        self._actors: tuple[float, frozenset[str]] = (0.0, frozenset())

    async def _is_actor(self, key: str) -> bool:
        """Whether ``key`` is a registered actor's (a "local" key); cached for 5 s."""
        expires, actors = self._actors
        if key not in actors or expires < time.monotonic():
            actors = frozenset(e.address for e in await self.client.entries())
            self._actors = (time.monotonic() + 5.0, actors)
        return key in actors

    async def _require_actor(self) -> None:
        caller = self._caller()
        if caller not in self.state.admins and not await self._is_actor(caller):
            raise Forbidden("only registered actors may borrow quota")

    async def lease(self, key: str, want: int) -> dict[str, Any]:
        """Lend up to ``want`` calls of ``key``'s budget for the current window."""
        await self._require_actor()
        state = self.state
        window = state.config.window
        now = time.time()
        index = int(now // window)
        rate = state.rate_of(key)
        if rate is None or (state.config.local_exempt and await self._is_actor(key)):
            # Admins, and actors' own keys when exempt: not counted.
            return msgspec.to_builtins(Grant(max(want, 1), index))  # type: ignore[no-any-return]
        budget = int(rate * window / 60)
        if len(self._granted) > 100_000:
            self._granted = {k: v for k, v in self._granted.items() if k[1] >= index}
        lent = self._granted.get((key, index), 0)
        granted = max(0, min(max(want, 1), budget - lent))
        self._granted[key, index] = lent + granted
        retry_after = 0.0 if granted else (index + 1) * window - now
        return msgspec.to_builtins(Grant(granted, index, retry_after))  # type: ignore[no-any-return]

    async def release(self, key: str, window: int, count: int) -> None:
        """Take back ``count`` unused calls of a lease for ``window``."""
        await self._require_actor()
        lent = self._granted.get((key, window))
        if lent:
            self._granted[key, window] = max(0, lent - max(count, 0))
