"""Quota leases on a host: a key's budget borrowed a part at a time from the policy actor.

A host borrows part of a key's budget for the current window from the policy actor
(:class:`Quotas`), spends it locally, and borrows again when it runs out, so a key's rate
holds across every replica and host without a round trip per call. A lease holds only for
the policy revision it was granted under: after any change (a stake, a role, the config)
the next call hands back what is left and borrows at the new rate, so a change applies to
the very next call, not after the old lease is spent.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec

from ..bus import ActorError, RateLimited

__all__ = ["Grant", "Quotas"]

log = logging.getLogger("actorbus.policy")

_LIMIT = 65536
"""Keys whose leases are kept at most (beyond, the spent windows' are dropped)."""


class Grant(msgspec.Struct, frozen=True):
    """A lease of ``granted`` calls for ``window``; ``retry_after`` when none are left."""

    granted: int
    window: int
    retry_after: float = 0.0


class _Lease:
    __slots__ = ("left", "local", "refused_until", "revision", "window")

    def __init__(
        self,
        window: int,
        left: int,
        revision: int,
        refused_until: float = 0.0,
        local: bool = False,
    ) -> None:
        self.window = window
        self.left = left
        self.revision = revision
        self.refused_until = refused_until
        self.local = local
        """Whether this is the host's own share, taken when the policy actor was out of
        reach (once per window)."""


LeaseFn = Callable[[str, int], Awaitable[Grant]]
"""Borrow up to ``want`` calls of a key's budget: ``lease(key, want)``."""
ReleaseFn = Callable[[str, int, int], Awaitable[None]]
"""Hand back unused calls: ``release(key, window, count)``."""


class Quotas:
    """Spends leases of each caller's budget; borrows more from the policy actor.

    One borrow at a time per caller; a refused borrow is remembered until the window ends
    (or the policy changes), so an exhausted key costs no round trip per call. A lease is
    good for the policy ``revision`` it was granted under only. If the policy actor cannot
    be reached, the host allows itself a tenth of the key's budget once per window and logs
    it.
    """

    def __init__(self, lease: LeaseFn, release: ReleaseFn, revision: Callable[[], int]) -> None:
        self._lease = lease
        self._release = release
        self._revision = revision
        self._leases: dict[str, _Lease] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def take(self, key: str, rate: float, window: float) -> None:
        """Spend one call of ``key``'s budget (``rate`` per minute); raises
        :class:`RateLimited` with ``retry_after`` when none is left."""
        now = time.time()
        index = int(now // window)
        revision = self._revision()
        lease = self._leases.get(key)
        if (
            lease is not None
            and lease.left > 0
            and (lease.window, lease.revision)
            == (
                index,
                revision,
            )
        ):
            lease.left -= 1
            return
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            lease = self._leases.get(key)
            if lease is not None and lease.window == index and lease.revision == revision:
                if lease.left > 0:
                    lease.left -= 1
                    return
                if lease.refused_until > now:
                    raise RateLimited(
                        f"quota of {rate:g} calls/min used up",
                        retry_after=lease.refused_until - now,
                    )
            elif lease is not None and lease.window == index and lease.left > 0 and not lease.local:
                # Granted under an older policy: what is left goes back, so the new rate
                # counts only the calls really made in this window.
                left, lease.left = lease.left, 0
                try:
                    await self._release(key, index, left)
                except ActorError as exc:
                    log.warning("could not hand back a stale lease for %s: %s", key, exc)
            budget = rate * window / 60
            want = max(1, math.ceil(budget / 10))
            local = False
            try:
                grant = await self._lease(key, want)
            except ActorError as exc:
                if lease is not None and lease.window == index and lease.local:
                    log.warning("policy actor unreachable for a lease (%s), local share spent", exc)
                    grant = Grant(0, index, (index + 1) * window - now)
                else:
                    log.warning("policy actor unreachable for a lease (%s): local share", exc)
                    grant = Grant(max(1, int(budget // 10)), index)
                    local = True
            if len(self._leases) > _LIMIT:
                self._leases = {k: v for k, v in self._leases.items() if v.window >= index}
                self._locks = {k: v for k, v in self._locks.items() if k in self._leases}
            if grant.granted <= 0:
                until = now + max(grant.retry_after, 0.001)
                self._leases[key] = _Lease(grant.window, 0, revision, until, local)
                raise RateLimited(
                    f"quota of {rate:g} calls/min used up", retry_after=grant.retry_after
                )
            self._leases[key] = _Lease(grant.window, grant.granted - 1, revision, local=local)

    def unused(self) -> list[tuple[str, int, int]]:
        """``(key, window, calls)`` still held of leases, to hand back when the host stops
        (not of local shares: the policy actor never lent them)."""
        return [
            (k, v.window, v.left) for k, v in self._leases.items() if v.left > 0 and not v.local
        ]
