"""Quota leases on a host: a key's budget borrowed a part at a time from the policy actor.

A host borrows part of a key's budget for the current window from the policy actor
(:class:`Quotas`), spends it locally, and borrows again when it runs out, so a key's rate
holds across every replica and host without a round trip per call. A lease holds for the
rate it was granted at: when that key's rate changes (its stake, its role, a role's or the
config's rules) the next call hands back what is left and borrows at the new rate, so a
change applies to the very next call; a change that leaves a key's rate as it was leaves
its lease alone (before issue 29 every change of the policy had every active key on every
host hand back its lease and borrow again: two writes each at the policy actor).

Near the end of a window, each key borrows for the next one at a moment of its own (spread
over the last fifth of the window, by a hash of the key), so the keys of a host do not all
borrow at the window's edge.

A lease is as large as the key's calls here need: :data:`FIRST_LEASE` calls at first, twice
the last lease each time one runs out, a tenth of the budget at most. A lease was a tenth
of the budget whatever the host used: ten hosts a key called once held all of it, and
the key's calls at an eleventh were 429 however far below its rate it was (60 actors
behind one gateway: 73% of its calls).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Final

import anyio
import msgspec

from ..bus import ActorError, RateLimited

__all__ = ["Grant", "Quotas"]

log = logging.getLogger("actorbus.policy")

_LIMIT = 65536
"""Keys whose leases are kept at most (beyond, the spent windows' are dropped)."""
AHEAD: Final = 0.2
"""The part of a window at whose end keys borrow for the next one."""
FIRST_LEASE: Final = 16
"""Calls a key's first lease on a host asks for."""


class Grant(msgspec.Struct, frozen=True):
    """A lease of ``granted`` calls for ``window``; ``retry_after`` when none are left."""

    granted: int
    window: int
    retry_after: float = 0.0


class _Lease:
    __slots__ = ("left", "local", "rate", "refused_until", "renew_at", "size", "window")

    def __init__(
        self,
        window: int,
        left: int,
        rate: float,
        refused_until: float = 0.0,
        local: bool = False,
        renew_at: float = math.inf,
        size: int = 0,
    ) -> None:
        self.window = window
        self.left = left
        self.size = size
        """Calls this lease asked for (the next asks for twice as many)."""
        self.rate = rate
        self.refused_until = refused_until
        self.local = local
        """Whether this is the host's own share, taken when the policy actor was out of
        reach (once per window)."""
        self.renew_at = renew_at
        """When the key borrows for the next window (never, once it has)."""


LeaseFn = Callable[[str, int, int], Awaitable[Grant]]
"""Borrow up to ``want`` calls of a key's budget for a window: ``lease(key, want, window)``."""
ReleaseFn = Callable[[str, int, int], Awaitable[None]]
"""Hand back unused calls: ``release(key, window, count)``."""


def _size(budget: float, wanted: int) -> int:
    """A lease's size: ``wanted`` calls, at least :data:`FIRST_LEASE` and at most a tenth
    of the ``budget`` (at least one call)."""
    return max(1, min(math.ceil(budget / 10), max(FIRST_LEASE, wanted)))


def _renewal(key: str) -> float:
    """Where in the last :data:`AHEAD` of a window ``key`` borrows for the next: a part of
    it, the same on every host."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=2).digest()) / 65536


class Quotas:
    """Spends leases of each caller's budget; borrows more from the policy actor.

    One borrow at a time per caller; a refused borrow is remembered until the window ends
    (or the key's rate changes), so an exhausted key costs no round trip per call. If the
    policy actor cannot be reached, the host allows itself a tenth of the key's budget once
    per window and logs it.
    """

    def __init__(self, lease: LeaseFn, release: ReleaseFn) -> None:
        self._lease = lease
        self._release = release
        self._leases: dict[str, _Lease] = {}
        self._next: dict[str, _Lease] = {}
        """Leases borrowed ahead for the next window."""
        self._locks: dict[str, anyio.Lock] = {}

    async def take(self, key: str, rate: float, window: float) -> None:
        """Spend one call of ``key``'s budget (``rate`` per minute); raises
        :class:`RateLimited` with ``retry_after`` when none is left."""
        now = time.time()
        index = int(now // window)
        lease = self._leases.get(key)
        if (
            lease is not None
            and lease.left > 0
            and lease.window == index
            and lease.rate == rate
            and now < lease.renew_at
        ):
            lease.left -= 1
            return
        async with self._locks.setdefault(key, anyio.Lock()):
            await self._take(key, rate, window, now, index)

    async def _take(self, key: str, rate: float, window: float, now: float, index: int) -> None:
        ahead = self._next.get(key)
        if ahead is not None and ahead.window <= index:
            del self._next[key]
            if ahead.window == index:
                ahead.renew_at = (index + 1 - AHEAD * _renewal(key)) * window
                self._leases[key] = ahead
        lease = self._leases.get(key)
        if lease is not None and lease.window == index and lease.rate == rate:
            if lease.left > 0:
                lease.left -= 1
                if now >= lease.renew_at:
                    lease.renew_at = math.inf
                    await self._borrow_ahead(key, rate, window, index)
                return
            if lease.refused_until > now:
                raise RateLimited(
                    f"quota of {rate:g} calls/min used up",
                    retry_after=lease.refused_until - now,
                )
        elif lease is not None and lease.window == index and lease.left > 0 and not lease.local:
            # Granted at another rate: what is left goes back, so the new rate counts
            # only the calls really made in this window.
            left, lease.left = lease.left, 0
            try:
                await self._release(key, index, left)
            except ActorError as exc:
                log.warning("could not hand back a stale lease for %s: %s", key, exc)
        budget = rate * window / 60
        want = _size(budget, 2 * lease.size if lease is not None else 0)
        local = False
        try:
            grant = await self._lease(key, want, index)
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
            self._next = {k: v for k, v in self._next.items() if v.window > index}
            self._locks = {k: v for k, v in self._locks.items() if k in self._leases}
        if grant.granted <= 0:
            until = now + max(grant.retry_after, 0.001)
            self._leases[key] = _Lease(grant.window, 0, rate, until, local, size=want)
            raise RateLimited(f"quota of {rate:g} calls/min used up", retry_after=grant.retry_after)
        ahead_of = local or key in self._next  # the next window's is borrowed already
        renew_at = math.inf if ahead_of else (index + 1 - AHEAD * _renewal(key)) * window
        self._leases[key] = _Lease(
            grant.window, grant.granted - 1, rate, local=local, renew_at=renew_at, size=want
        )

    async def _borrow_ahead(self, key: str, rate: float, window: float, index: int) -> None:
        """Borrow ``key``'s first lease of the next window now (a refusal or an
        unreachable policy actor: it borrows at the window's start, as before)."""
        current = self._leases.get(key)
        want = _size(rate * window / 60, current.size if current is not None else 0)
        try:
            grant = await self._lease(key, want, index + 1)
        except ActorError as exc:
            log.debug("could not borrow ahead for %s: %s", key, exc)
            grant = Grant(0, index + 1)
        self._next[key] = _Lease(index + 1, max(grant.granted, 0), rate, size=want)

    def unused(self) -> list[tuple[str, int, int]]:
        """``(key, window, calls)`` still held of leases, to hand back when the host stops
        (not of local shares: the policy actor never lent them)."""
        held = [*self._leases.items(), *self._next.items()]
        return [(k, v.window, v.left) for k, v in held if v.left > 0 and not v.local]
