"""How fast: quota leases. ``lease(key, want)`` hands a host up to ``want`` calls of
``key``'s budget for the current window, never more than the budget in total; ``release``
takes back what a host did not use.

What was lent lives in JetStream, not in this process: one counter per key and window
parity (``<key>.0``, ``<key>.1``: a host borrows ahead for the next window near the end of
the current one) in the bucket ``<policy bucket>_lent``, changed by compare-and-set on its
revision. Every replica of the
policy actor lends from the same counters, so the replicas need no leader, and a replica
killed mid-window forgets nothing (a counter is written before the grant is sent). A lease
whose reply is lost is simply lent and unused: a retry can lose budget, never double it.

A counter is a record (:mod:`actorbus.bus.records`) signed by the policy key: one written
by anyone else counts as nothing lent, and so does one dated past the next window (a
counter from the future written where anyone could write once refused its key every call
of the windows up to that date). Either is written over by the next compare-and-set.

Without JetStream (its quorum lost), each replica counts on its own, in memory, and says
so once: a key may then get a budget per policy replica per window, until JetStream is
back.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import msgspec

from ...bus import ActorError, BadRequest, Forbidden, Unavailable
from ...bus.jetstream import Bucket, when_ready
from ...bus.records import open_record, sign_record
from ...bus.wire import UNDECODABLE
from ...host import endpoint
from ...host.quotas import Grant
from .store import PolicyStore

__all__ = ["MAX_WINDOW", "Quotas"]

log = logging.getLogger("actorbus.policy")

MAX_WINDOW = 86_400.0
"""The longest quota window (seconds): a counter lives that long after its last change."""
_CONTENDED = 16
"""Compare-and-set attempts before a lease gives up (503): other replicas kept winning."""
_REVISIONS = 100_000
"""Counters whose last revision a replica remembers (a known revision saves a read)."""
_SHARED_WAIT = 0.5
"""Seconds a lease waits for the shared counters before it counts here instead: less than
the deadline of a host's attempt (a third of 4 s, less the margin: 1 s), or the lease
would time out (408) rather than be counted here."""
_OFFLINE = 5.0
"""Seconds a replica counts on its own before it tries the shared counters again."""


class Lent(msgspec.Struct, array_like=True, frozen=True):
    """A key's counter: ``lent`` calls of its budget lent in ``window`` (time // length),
    windows of ``length`` seconds (a counter of another length counts as none: the
    windows' numbers are not comparable)."""

    window: int
    lent: int
    length: float = 0.0


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Lent).decode


class Quotas(PolicyStore):
    """The lease calls hosts make (registered actors and admins only)."""

    def __init__(self) -> None:
        self._counters: dict[str, tuple[Lent, int]] = {}
        self._here: dict[tuple[str, int, float], int] = {}
        self._offline_until = 0.0
        self._actors: tuple[float, frozenset[str]] = (0.0, frozenset())

    async def on_start(self) -> None:
        await super().on_start()
        settings = self.settings
        name = settings.policy_bucket + "_lent"

        async def opened() -> Bucket:
            lent = await Bucket.open(
                self.nc, name, ttl=MAX_WINDOW, replicas=settings.js_replicas, direct_reads=True
            )
            await lent.settle()  # one made before refused no rollups
            return lent

        self._lent = await when_ready(opened, "the quota counters", wait=settings.start_wait)

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

    async def _count(self, key: str, window: int, change: int, budget: int) -> int:
        """Add ``change`` (negative: take back) to what ``key`` has been lent in ``window``
        (of the policy's window length), kept within ``0..budget``; returns what was really
        added."""
        length = self.state.config.window
        if time.monotonic() >= self._offline_until:
            try:
                with anyio.fail_after(_SHARED_WAIT):
                    added = await self._count_shared(key, window, length, change, budget)
            except (Unavailable, TimeoutError) as exc:
                if not self._offline_until:
                    log.warning("quota counters unreachable (%s): counting here until back", exc)
                self._offline_until = time.monotonic() + _OFFLINE
            else:
                if self._offline_until:
                    log.warning("quota counters reachable again")
                    self._offline_until = 0.0
                    self._here.clear()
                return added
        if len(self._here) >= _REVISIONS:
            self._here = {k: v for k, v in self._here.items() if k[1] >= window}
        lent = self._here.get((key, window, length), 0)
        new = max(0, min(budget, lent + change))
        self._here[key, window, length] = new
        return new - lent

    async def _count_shared(
        self, key: str, window: int, length: float, change: int, budget: int
    ) -> int:
        """:meth:`_count` on the counter in JetStream, by compare-and-set. A key has two,
        one for even windows and one for odd, so a lease borrowed ahead for the next
        window and one for the current never meet."""
        key = f"{key}.{window % 2}"
        for _ in range(_CONTENDED):
            known = self._counters.get(key)
            if known is None:
                found = await self._lent.get(key)
                known = (self._lent_of(key, found[0]), found[1]) if found else (Lent(0, 0), 0)
            counter, revision = known
            if counter.window > int(time.time() // length) + 1:
                counter = Lent(0, 0)  # from the future: no clock of ours is that far ahead
            same = counter.length == length
            lent = counter.lent if same and counter.window == window else 0
            if same and counter.window > window:
                return 0  # another replica's clock is in the next window already
            new = max(0, min(budget, lent + change))
            if new == lent and same and counter.window == window:
                return 0
            after = Lent(window, new, length)
            signed = sign_record(self.key, self._lent.name, key, _encode(after))
            written = await self._lent.update(key, signed, revision)
            if written is not None:
                if len(self._counters) >= _REVISIONS:
                    self._counters.clear()
                self._counters[key] = (after, written)
                return new - lent
            self._counters.pop(key, None)  # another replica wrote first: read it again
        raise Unavailable(f"the quota counter of {key} is contended; try again")

    def _lent_of(self, key: str, data: bytes) -> Lent:
        """The counter stored at ``key``; anything a replica of this policy did not sign
        counts as nothing lent, and is written over by the next compare-and-set."""
        try:
            record = open_record(self._lent.name, key, data)
            if record.by != self.address or record.value is None:
                return Lent(0, 0)
            return _decode(record.value)
        except (ActorError, *UNDECODABLE):
            return Lent(0, 0)

    @endpoint(idempotent=True)  # a retried lease may lose budget, never lend it twice
    async def lease(self, key: str, want: int, window: int | None = None) -> dict[str, Any]:
        """Lend up to ``want`` calls of ``key``'s budget for ``window`` (its number: the
        current one, or the next, borrowed ahead; default the current)."""
        await self._require_actor()
        state = self.state
        now = time.time()
        length = state.config.window
        current = int(now // length)
        if window is not None and window > current + 1:
            raise BadRequest(f"a lease is for window {current} or {current + 1}, not {window}")
        # A host whose clock is behind asks for a window past here: it gets the current.
        index = current if window is None else max(window, current)
        rate = state.rate_of(key)
        if rate is None or (state.config.local_exempt and await self._is_actor(key)):
            # Admins, and actors' own keys when exempt: not counted.
            return msgspec.to_builtins(Grant(max(want, 1), index))  # type: ignore[no-any-return]
        budget = int(rate * length / 60)
        granted = await self._count(key, index, max(want, 1), budget)
        retry_after = 0.0 if granted else (index + 1) * length - now
        return msgspec.to_builtins(Grant(granted, index, retry_after))  # type: ignore[no-any-return]

    async def release(self, key: str, window: int, count: int) -> None:
        """Take back ``count`` unused calls of a lease for ``window``."""
        await self._require_actor()
        if count > 0:
            await self._count(key, window, -count, 2**62)
