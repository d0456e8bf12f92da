"""Freshness and replay: each ``(key, nonce)`` is accepted once per actor, by any replica.

A replica checks a request against the nonces it has seen, records it, and announces it
on ``actorbus.nonce.<name>``: the nonces accepted in one turn of the event loop go out as one
MessagePack array, so announcing shares a socket write with that turn's replies instead of
costing one of its own. That subject is captured by the ``ACTOR_NONCES`` stream (kept for
the replay window), so:

- running replicas learn each other's nonces from a core subscription, and
- a replica that starts (or restarts) reads the window's nonces from the stream before it
  takes its first call.

The race window left open: two replicas that receive the *same* envelope within the
announcement's delay (one event-loop turn plus one NATS hop, typically well under a
millisecond on a LAN) may both accept it. Anything later is rejected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import msgspec

from ..bus import NATS, RequestMeta, Unauthorized
from ..bus.jetstream import ensure_stream, read_subject
from ..bus.subjects import NONCE_PREFIX, NONCE_STREAM, nonce_subject
from ..bus.wire import NonceNote

__all__ = ["NonceBook", "ReplayGuard", "replay_guard"]

log = logging.getLogger("actorbus.runtime")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[NonceNote]).decode


class NonceBook:
    """The nonces seen inside the freshness window, pruned by the second.

    A request stamped ``t`` is acceptable while ``|now - t| <= max_skew``, so its nonce
    needs remembering until ``t + max_skew``: at most ``2 * max_skew`` seconds.
    """

    def __init__(self, max_skew: float) -> None:
        self.max_skew_ms = int(max_skew * 1000)
        self._expiry: dict[str, int] = {}
        self._by_second: dict[int, list[str]] = {}
        self._pruned_to = int(time.time())

    def __len__(self) -> int:
        return len(self._expiry)

    def check_time(self, time_ms: int, now_ms: int) -> None:
        """Raises :class:`Unauthorized` if ``time_ms`` is outside ``now ± max_skew``."""
        if time_ms < now_ms - self.max_skew_ms:
            raise Unauthorized(f"stale request: Actor-Time is {now_ms - time_ms} ms old")
        if time_ms > now_ms + self.max_skew_ms:
            raise Unauthorized(
                f"request from the future: Actor-Time is {time_ms - now_ms} ms ahead"
            )

    def seen(self, key: str, nonce: str) -> bool:
        return (key + nonce) in self._expiry

    def add(self, key: str, nonce: str, time_ms: int) -> None:
        entry = key + nonce
        expiry = time_ms + self.max_skew_ms
        if self._expiry.get(entry, 0) >= expiry:
            return
        self._expiry[entry] = expiry
        self._by_second.setdefault(expiry // 1000, []).append(entry)

    def prune(self, now_ms: int) -> None:
        now_s = now_ms // 1000
        if now_s <= self._pruned_to:
            return
        for second in range(self._pruned_to, now_s):
            for entry in self._by_second.pop(second, ()):
                if self._expiry.get(entry, now_ms + 1) <= now_ms:
                    del self._expiry[entry]
        self._pruned_to = now_s


class ReplayGuard:
    """Checks and records requests for one actor name across all its replicas."""

    def __init__(self, nc: NATS, name: str, max_skew: float) -> None:
        self._nc = nc
        self._subject = nonce_subject(name)
        self.book = NonceBook(max_skew)
        self._outbox: list[NonceNote] = []
        self._wakeup = anyio.Event()

    def check(self, meta: RequestMeta) -> None:
        """Accept ``meta`` once: raises :class:`Unauthorized` for a stale, future or replayed
        request; otherwise records the nonce and queues its announcement to the replicas."""
        now_ms = int(time.time() * 1000)
        book = self.book
        book.check_time(meta.time_ms, now_ms)
        book.prune(now_ms)
        if book.seen(meta.key, meta.nonce):
            raise Unauthorized("replayed nonce")
        book.add(meta.key, meta.nonce, meta.time_ms)
        self._outbox.append(NonceNote(meta.key, meta.nonce, meta.time_ms))
        if len(self._outbox) == 1:
            self._wakeup.set()

    async def _announce(self) -> None:
        """Publish the nonces accepted since the last turn, as one message; until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            batch, self._outbox = self._outbox, []
            await self._nc.publish(self._subject, _encode(batch))

    def learn(self, data: bytes) -> None:
        try:
            notes = _decode(data)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed nonce announcement on %s", self._subject)
            return
        for note in notes:
            self.book.add(note.key, note.nonce, note.time_ms)

    async def _follow(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        sub = await self._nc.subscribe(self._subject, pending_msgs_limit=1_000_000)
        try:
            await self._nc.flush()
            for data in await read_subject(self._nc, NONCE_STREAM, self._subject):
                self.learn(data)
            task_status.started()
            async for msg in sub.messages:
                self.learn(msg.data)
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()


@asynccontextmanager
async def replay_guard(
    nc: NATS, name: str, max_skew: float, *, replicas: int = 1
) -> AsyncIterator[ReplayGuard]:
    """A :class:`ReplayGuard` that has loaded the window's nonces and follows new ones.

    Started means ready: the stream's history is read before this yields.
    """
    await ensure_stream(
        nc, NONCE_STREAM, [f"{NONCE_PREFIX}.>"], max_age=2 * max_skew + 5, replicas=replicas
    )
    guard = ReplayGuard(nc, name, max_skew)
    async with anyio.create_task_group() as tg:
        await tg.start(guard._follow)
        tg.start_soon(guard._announce)
        try:
            yield guard
        finally:
            tg.cancel_scope.cancel()
