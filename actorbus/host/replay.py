"""Freshness and replay: each ``(key, nonce)`` is accepted once per actor, by any replica.

A replica checks a request against the nonces it has seen, records it, and announces it
on ``actorbus.nonce.<name>``: the nonces accepted in one turn of the event loop go out as one
MessagePack array, so announcing shares a socket write with that turn's replies instead of
costing one of its own. That subject is captured by the name's own stream
(:func:`~actorbus.bus.subjects.nonce_stream`, kept for the replay window: one per name, so
a replica that floods its own subjects evicts no other name's nonces, as one replica did
of the stream every name once shared: issue 30), so:

- running replicas learn each other's nonces from a core subscription, and
- a replica that starts (or restarts) reads the window's nonces from the stream before it
  takes its first call (by batched direct gets: a consumer's deliver subject is its
  maker's choice, and replicas make none of a shared stream, :mod:`actorbus.bus.rights`).

Anyone on the bus can publish on that subject, so each announcement carries an HMAC by a
secret derived from the actor's seed (which all its replicas share, and nobody else) and a
replica learns only from announcements that verify, and only notes inside the freshness
window: forged notes cannot fill its memory. A replica skips its own announcements (they
come back to it) by instance id.

An announcement takes one event-loop turn plus one NATS hop: two replicas that receive
the *same* envelope within that delay would both accept it. Who could send it twice at
once? The caller (its own call, twice: as calling twice), the actor's replicas (the
callee itself), and a carrier: a gateway relaying a caller's end-to-end envelope
(``_INBOX.relay.<gateway>.…``) holds it and could race it to two replicas (issue 30). So
a relayed envelope is also *claimed* before it runs: a JetStream publish on
``actorbus.claim.<name>.<hex sha256 of "<key>\n<nonce>">`` that expects no message on that
subject before it (``Nats-Expected-Last-Subject-Sequence: 0``), which one replica wins and
any other loses, as a replay (:meth:`ReplayGuard.claim`, about a millisecond per relayed
call).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import msgspec
from nats.aio.subscription import Subscription

from ..bus import (
    NATS,
    ActorError,
    Keypair,
    LogThrottle,
    Msg,
    RequestMeta,
    Unauthorized,
    Unavailable,
    publish,
)
from ..bus.jetstream import (
    JS_ERRORS,
    delete_stream,
    direct_batches,
    ensure_stream,
    publish_acked,
    stream_exists,
)
from ..bus.stored import ApiError
from ..bus.subjects import SHARED_NONCE_STREAM, claim_subject, nonce_stream, nonce_subject
from ..bus.wire import H_INSTANCE, UNDECODABLE, NonceNote, sign_announcement, verify_announcement

__all__ = ["NonceBook", "ReplayGuard", "ensure_nonces", "replay_guard", "retire_shared_nonces"]

log = logging.getLogger("actorbus.host")

_encode = msgspec.msgpack.Encoder().encode

NONCES_MAX_BYTES = 64 * 1024 * 1024
"""Bytes a name's nonce stream keeps at most, the oldest dropped first: about 700,000
nonces, a window of 65 s at 10,000 calls a second to one name. Past that, a replica that
restarts learns fewer of the window's nonces than were accepted (running replicas still
hear every announcement)."""
_BATCH = 1000
"""Nonces in one announcement at most: about 100 KB."""
_MAX_ANNOUNCEMENT = 256 * 1024
"""Bytes of one announcement the stream stores at most."""
_decode = msgspec.msgpack.Decoder(list[NonceNote]).decode
_FIRST = {"Nats-Expected-Last-Subject-Sequence": "0"}


class _Claimed(msgspec.Struct):
    """JetStream's answer to a publish: an ack, or ``error``."""

    error: ApiError | None = None


_claimed = msgspec.json.Decoder(_Claimed).decode
_WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a publish whose subject already holds a message."""
_CLAIM_WAIT = 2.0
"""Seconds a claim may take."""
_LOAD_WAIT = 10.0
"""Seconds reading the replay window may take (64 MiB at most, by direct gets of 4 MiB:
nothing made on the server)."""


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

    def __init__(self, nc: NATS, name: str, max_skew: float, key: Keypair, instance: str) -> None:
        self._nc = nc
        self._name = name
        self._subject = nonce_subject(name)
        self._key = key
        self._instance = instance
        self.book = NonceBook(max_skew)
        self._outbox: list[NonceNote] = []
        self._incoming: Subscription | None = None
        self._wakeup = anyio.Event()
        self._throttle = LogThrottle(log)

    @property
    def pending(self) -> bool:
        """Whether nonces wait to be announced."""
        return bool(self._outbox)

    def check(self, meta: RequestMeta) -> None:
        """Accept ``meta`` once: raises :class:`Unauthorized` for a stale, future or replayed
        request; otherwise records the nonce and queues its announcement to the replicas."""
        now_ms = int(time.time() * 1000)
        book = self.book
        book.check_time(meta.time_ms, now_ms)
        book.prune(now_ms)
        self._catch_up()
        if book.seen(meta.key, meta.nonce):
            raise Unauthorized("replayed nonce")
        book.add(meta.key, meta.nonce, meta.time_ms)
        self._outbox.append(NonceNote(meta.key, meta.nonce, meta.time_ms))
        if len(self._outbox) == 1:
            self._wakeup.set()

    async def claim(self, meta: RequestMeta) -> None:
        """Make ``meta``'s nonce this replica's alone among the actor's replicas (checked
        by :meth:`check` first): raises :class:`Unauthorized` if another replica claimed
        it, :class:`Unavailable` if JetStream cannot say (then it must not run)."""
        digest = hashlib.sha256(f"{meta.key}\n{meta.nonce}".encode()).hexdigest()
        try:
            answer = await self._nc.request(
                claim_subject(self._name, digest), b"", timeout=_CLAIM_WAIT, headers=_FIRST
            )
            error = _claimed(answer.data).error
        except (*JS_ERRORS, *UNDECODABLE) as exc:
            raise Unavailable(f"claiming a relayed request's nonce: {exc}") from exc
        if error is not None:
            if error.err_code == _WRONG_LAST_SEQUENCE:
                raise Unauthorized("replayed nonce")
            raise Unavailable(f"claiming a relayed request's nonce: {error.description}")

    async def _announce(self) -> None:
        """Publish the nonces accepted since the last turn, as one message; until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            await self.flush()

    async def flush(self, *, stored: bool = False) -> None:
        """Publish what the outbox holds now; with ``stored``, wait until the stream has it
        (on the way out: a nonce accepted in the last turn before a stop must be in the
        stream before a replica started right after reads it, or it would accept the
        replay)."""
        outbox, self._outbox = self._outbox, []
        send = publish_acked if stored else publish
        for start in range(0, len(outbox), _BATCH):
            body = _encode(outbox[start : start + _BATCH])
            headers = sign_announcement(self._key, self._subject, body, self._instance)
            try:
                await send(self._nc, self._subject, body, headers)
            except ActorError as exc:
                self._throttle.log(
                    logging.WARNING, "announce", "nonce announcement not sent: %s", exc.message
                )

    def _catch_up(self) -> None:
        """Learn the announcements this connection has received but the follower task has
        not read yet. They arrived before the request being checked (one connection
        delivers in order), but nats-py hands each subscription's messages to its own
        task, so without this a replay sent right after its reply could be checked first.
        (Reads nats-py's subscription queue: it has no public non-blocking read.)"""
        sub = self._incoming
        if sub is None or not sub.pending_msgs:
            return
        queue = sub._pending_queue
        while not queue.empty():
            msg = queue.get_nowait()
            queue.task_done()
            sub._pending_size -= len(msg.data)
            self.learn(msg)

    def learn(self, msg: Msg) -> None:
        """Record the nonces of a verified announcement from another replica."""
        if (msg.headers or {}).get(H_INSTANCE) == self._instance:
            return  # our own, already recorded
        try:
            verify_announcement(self._key, self._subject, msg.headers, msg.data)
            notes = _decode(msg.data)
        except (Unauthorized, *UNDECODABLE) as exc:
            self._throttle.log(
                logging.WARNING,
                "forged",
                "ignoring a nonce announcement on %s: %s",
                self._subject,
                exc.message if isinstance(exc, Unauthorized) else "malformed",
            )
            return
        now_ms = int(time.time() * 1000)
        skew_ms = self.book.max_skew_ms
        for note in notes:
            if abs(note.time_ms - now_ms) <= skew_ms:  # others could never be accepted
                self.book.add(note.key, note.nonce, note.time_ms)

    async def _follow(self, kept: bool, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Follow the announcements, after reading the window's from the stream if it is
        ``kept`` (one that is not holds none: a new name's, on a joined node)."""

        # A callback, not ``sub.messages``: nats-py's iterator takes a message off the
        # queue in a task of its own and hands it over a loop turn later, a turn in which
        # neither _catch_up nor learn could see it (the cross-replica replay flake). A
        # callback learns a message in the same step that takes it off the queue.
        async def on_message(msg: Msg) -> None:
            self.learn(msg)

        sub = await self._nc.subscribe(self._subject, cb=on_message, pending_msgs_limit=1_000_000)
        try:
            await self._nc.flush()
            window = {"seq": 1, "next_by_subj": self._subject}
            try:
                if kept:
                    async for stored in direct_batches(
                        self._nc, nonce_stream(self._name), window, timeout=_LOAD_WAIT
                    ):
                        self.learn(stored)
            except Unavailable as exc:
                log.warning(
                    "%s: replay window not loaded (%s): until a request's Actor-Time is "
                    "%gs old, one sent before this replica started and replayed to it "
                    "may be accepted once; replicas running together still share nonces",
                    self._subject,
                    exc.message,
                    self.book.max_skew_ms / 1000,
                )
            self._incoming = sub
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self._incoming = None
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()


async def ensure_nonces(nc: NATS, name: str, max_skew: float, *, replicas: int = 1) -> None:
    """Make the nonce stream of ``name`` (its announcements and claims, kept for the replay
    window, :data:`NONCES_MAX_BYTES` at most), or find it made: the policy actor makes it
    as a replica of ``name`` connects (a ticket grants no stream's creation), a replica on
    a NATS without the policy's auth callout makes its own. Raises :class:`Unavailable`."""
    await ensure_stream(
        nc,
        nonce_stream(name),
        [nonce_subject(name), claim_subject(name)],
        max_age=2 * max_skew + 5,
        replicas=replicas,
        max_bytes=NONCES_MAX_BYTES,
        max_msg_size=_MAX_ANNOUNCEMENT,
        direct=True,
    )


async def retire_shared_nonces(nc: NATS) -> None:
    """Delete the nonce stream every name once shared, if it is there (the policy actor
    does, as it starts): its subjects (``actorbus.nonce.>``) overlap each name's own
    stream's, which JetStream would not make beside it. What it held is a minute's nonces
    at most. Raises :class:`Unavailable`."""
    if await delete_stream(nc, SHARED_NONCE_STREAM):
        log.warning(
            "deleted %s, the nonce stream every name shared: each has its own now",
            SHARED_NONCE_STREAM,
        )


@asynccontextmanager
async def replay_guard(
    nc: NATS,
    name: str,
    max_skew: float,
    key: Keypair,
    instance: str,
    *,
    replicas: int = 1,
    make: bool = True,
) -> AsyncIterator[ReplayGuard]:
    """A :class:`ReplayGuard` for replica ``instance`` of actor ``name`` (whose key is
    ``key``) that has loaded the window's nonces and follows new ones.

    Started means ready: the stream's history is read before this yields (or, when
    JetStream is unavailable, a warning says it could not be). Without ``make`` (a home
    that knows a policy: its actor makes each name's stream as a replica connects or
    claims its name; a joined node's replica, whose leaf may make no stream in the hub) a
    stream not made yet is not made here, and holds no nonce to read.
    """
    kept = True
    try:
        if make:
            await ensure_nonces(nc, name, max_skew, replicas=replicas)
        else:
            kept = await stream_exists(nc, nonce_stream(name))
    except Unavailable as exc:  # no JetStream: start anyway (reading the window says so)
        log.debug("nonce stream: %s", exc)
    guard = ReplayGuard(nc, name, max_skew, key, instance)
    async with anyio.create_task_group() as tg:
        await tg.start(guard._follow, kept)
        tg.start_soon(guard._announce)
        try:
            yield guard
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await guard.flush(stored=True)
            tg.cancel_scope.cancel()
