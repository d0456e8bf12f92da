"""Request/reply: the one way anything of ours waits for an answer on NATS.

Each connection has one reply subscription, ``<inbox>.*``, made by its first request.
A request takes the next token of that inbox as its reply subject, a future, and a slot
of a timing wheel swept by one loop timer; the subscription's callback resolves the
future, the sweep times it out, the connection's error callback fails it at once when
the server refuses the publish (:class:`Forbidden`), and a ``finally`` forgets it on
every exit path, cancellation included. A request holds no lock, cancel scope, event or
task of its own, and does not yield between building its headers and handing its message
to nats-py: an earlier version took an anyio lock, an Event and a cancel scope per
request, and their checkpoints let nats-py's flusher run between one request and the
next, so each request left in a socket write of its own (half the calls per second, 3-8x
the nats-server CPU per call: issue 28). Now the requests made in one turn of the loop
leave in one write.

A relayed request (its reply subject was signed elsewhere, :data:`HeadersFor`) has a
subscription of its own for that subject, resolved the same way.

A request may say which answers it accepts (a call's reply must verify): anything else
that arrives on its reply subject is dropped, said (throttled), and the request waits on
until its timeout. Before, the first message won: a JetStream ack or a stranger's
publish onto an in-flight inbox turned a good call into a 502 (issue 30).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import weakref
from collections.abc import Callable
from typing import Final

import anyio
import nats.errors

from .connection import NATS, Msg, on_refusal, publish
from .errors import BadRequest, Forbidden, NoResponders, ReplyTimeout, Unavailable, excerpt
from .throttle import LogThrottle

__all__ = ["HeadersFor", "gather", "request", "request_all"]

log = logging.getLogger("actorbus.client")
_throttle = LogThrottle(log)

HeadersFor = Callable[[str], dict[str, str]]
"""Builds a request's headers for the reply subject it is sent with (a signed request
names its reply subject, so it is signed once that subject is known)."""

_TIMED_OUT: Final = object()
MAX_ANSWERS: Final = 10_000
"""Messages one request of :func:`request_all` takes at most (past that it ends there)."""
_TICK: Final = 0.05
"""Seconds per slot of the timing wheel: a request times out up to this much late."""


class _Waiting:
    """One request waiting for its answer: one message, or (with ``last``) the messages up
    to the one ``last`` says ends it."""

    __slots__ = ("accept", "dropped", "future", "last", "received", "subject", "tick")

    def __init__(
        self,
        future: asyncio.Future[object],
        subject: str,
        tick: int,
        last: Callable[[Msg], bool] | None = None,
        accept: Callable[[Msg], bool] | None = None,
    ) -> None:
        self.future = future
        self.subject = subject
        self.tick = tick
        self.last = last
        self.accept = accept
        self.dropped = 0
        """Messages on its reply subject that ``accept`` refused."""
        self.received: list[Msg] = []


class _Replies:
    """The answers to the requests made on one connection, by reply subject, and when each
    stops waiting: a timing wheel of :data:`_TICK` slots, one loop timer for them all while
    any waits (a timer per request cost a call more than its MAC on asyncio's loop)."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox() + "."
        self.waiting: dict[str, _Waiting] = {}
        self.subscribed = False
        self._tokens = itertools.count()
        self._due: dict[int, set[str]] = {}
        """Per slot of the wheel, the requests that time out in it."""
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_tick = 0
        """The slot the sweeper is set for."""
        on_refusal(nc, self.refuse)

    async def subscribe(self) -> None:
        """Subscribe to this connection's replies, once. The flag goes up before the
        subscription is sent: a request made meanwhile publishes after the SUB on the same
        connection, so the server has it before any answer."""
        if self.subscribed:
            return
        self.subscribed = True
        try:
            await self.nc.subscribe(self.prefix + "*", cb=self.resolve)
        except nats.errors.Error as exc:
            self.subscribed = False
            raise Unavailable(f"cannot subscribe for replies: {exc}") from exc

    def reply_subject(self) -> str:
        return self.prefix + format(next(self._tokens), "x")

    async def ask(
        self,
        subject: str,
        body: bytes,
        headers: dict[str, str] | None,
        reply: str,
        timeout: float,
        last: Callable[[Msg], bool] | None = None,
        accept: Callable[[Msg], bool] | None = None,
    ) -> tuple[object, _Waiting]:
        """Publish the request and wait for its answer (or :data:`_TIMED_OUT`); forgets
        it on every way out. Raises what :func:`publish` raises, and a refusal."""
        loop = asyncio.get_running_loop()
        tick = int((loop.time() + timeout) / _TICK) + 1
        waiting = _Waiting(loop.create_future(), subject, tick, last, accept)
        self.waiting[reply] = waiting
        self._due.setdefault(tick, set()).add(reply)
        if self._sweeper is None or tick < self._sweep_tick:  # the first slot to come
            if self._sweeper is not None:
                self._sweeper.cancel()
            self._sweep_tick = tick
            self._sweeper = loop.call_at(tick * _TICK, self._sweep)
        try:
            await publish(self.nc, subject, body, headers, reply)
            return await waiting.future, waiting
        finally:
            del self.waiting[reply]
            due = self._due.get(tick)
            if due is not None:
                due.discard(reply)
                if not due:
                    del self._due[tick]

    def _sweep(self) -> None:
        """Time out the requests whose slot has come; again while any waits."""
        loop = asyncio.get_running_loop()
        now = int(loop.time() / _TICK)
        for tick in [t for t in self._due if t <= now]:
            for reply in self._due.pop(tick):
                waiting = self.waiting.get(reply)
                if waiting is not None and not waiting.future.done():
                    waiting.future.set_result(_TIMED_OUT)
        self._sweeper = None
        if self._due:
            self._sweep_tick = max(min(self._due), now + 1)
            self._sweeper = loop.call_at(self._sweep_tick * _TICK, self._sweep)

    async def resolve(self, msg: Msg) -> None:
        waiting = self.waiting.get(msg.subject)
        if waiting is None or waiting.future.done():
            return
        if waiting.accept is not None and not _no_responders(msg) and not waiting.accept(msg):
            waiting.dropped += 1
            _throttle.log(
                logging.WARNING,
                "dropped",
                "a message on the reply subject of a request on %s was not its answer: "
                "dropped (still waiting)",
                excerpt(waiting.subject),
            )
            return
        if waiting.last is None:
            waiting.future.set_result(msg)
            return
        waiting.received.append(msg)
        if waiting.last(msg) or len(waiting.received) > MAX_ANSWERS:
            waiting.future.set_result(waiting.received)

    def refuse(self, subject: str) -> bool:
        """The server refused a publish on ``subject`` (lower case): the requests sent on
        it end now with :class:`Forbidden`; whether any was waiting."""
        taken = False
        for waiting in self.waiting.values():
            if waiting.subject.lower() == subject and not waiting.future.done():
                waiting.future.set_exception(
                    Forbidden(
                        f"the NATS server refuses this connection's requests on "
                        f"{excerpt(waiting.subject)} (its rights from the policy when it "
                        "connected)"
                    )
                )
                taken = True
        return taken


_replies: weakref.WeakKeyDictionary[NATS, _Replies] = weakref.WeakKeyDictionary()


def _replies_of(nc: NATS) -> _Replies:
    replies = _replies.get(nc)
    if replies is None:
        replies = _replies[nc] = _Replies(nc)
    return replies


async def request(
    nc: NATS,
    subject: str,
    body: bytes,
    headers: dict[str, str] | HeadersFor,
    timeout: float,
    *,
    reply: str = "",
    accept: Callable[[Msg], bool] | None = None,
) -> Msg:
    """One request/reply. ``headers`` are the request's, or what builds them for its reply
    subject (:data:`HeadersFor`); that subject is ``reply`` if given (the request was
    signed for it elsewhere: a relay), else a fresh one of this connection's. With
    ``accept``, a message it refuses is not the answer: it is dropped, and the request
    waits on.

    Raises :class:`NoResponders`, :class:`Forbidden` (the server refused the publish: this
    connection may not send on ``subject``), :class:`Unavailable` (a closed connection),
    :class:`ReplyTimeout` (no reply within ``timeout`` seconds, give or take 50 ms) or
    :class:`PayloadTooLarge` (the request, headers included, is over the server's max
    payload). Cancellation passes through at once."""
    replies = _replies_of(nc)
    relay = None
    if reply:
        if reply in replies.waiting:  # a relayed envelope sent twice at once
            raise BadRequest("a request with this reply subject is waiting for its answer")
        try:
            relay = await nc.subscribe(reply, cb=replies.resolve, max_msgs=0 if accept else 1)
        except nats.errors.Error as exc:
            raise Unavailable(f"cannot subscribe for the reply: {exc}") from exc
    else:
        await replies.subscribe()
        reply = replies.reply_subject()
    try:
        built = headers(reply) if callable(headers) else headers
        answer, waiting = await replies.ask(subject, body, built, reply, timeout, accept=accept)
    finally:
        if relay is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
                await relay.unsubscribe()
    if answer is _TIMED_OUT:
        dropped = f" ({waiting.dropped} other messages dropped)" if waiting.dropped else ""
        raise ReplyTimeout(f"no reply on {subject} within {timeout:g}s{dropped}")
    assert isinstance(answer, Msg)
    if _no_responders(answer):
        raise NoResponders(f"no actor is serving {subject}")
    return answer


def _no_responders(msg: Msg) -> bool:
    """Whether ``msg`` is the server's word that nobody subscribes to the subject."""
    headers = msg.headers
    return headers is not None and headers.get("Status") == "503" and not msg.data


async def request_all(
    nc: NATS, subject: str, body: bytes, timeout: float, *, last: Callable[[Msg], bool]
) -> list[Msg]:
    """One request answered by several messages on its reply subject (a JetStream batch
    get): the messages up to the first one that ``last`` says ends the answer, that one
    included (at most :data:`MAX_ANSWERS`), within ``timeout`` seconds. Raises what
    :func:`request` raises; a ``NoResponders`` is not an answer here either."""
    replies = _replies_of(nc)
    await replies.subscribe()
    answer, waiting = await replies.ask(subject, body, None, replies.reply_subject(), timeout, last)
    if answer is _TIMED_OUT:
        raise ReplyTimeout(
            f"no whole answer on {subject} within {timeout:g}s "
            f"({len(waiting.received)} messages of it came)"
        )
    assert isinstance(answer, list)
    first = answer[0]
    if _no_responders(first):
        raise NoResponders(f"nobody answers {subject}")
    return answer


async def gather(
    nc: NATS, subject: str, body: bytes, *, wait: float, limit: int, quiet: float = 0.0
) -> list[Msg]:
    """Publish ``body`` on ``subject`` with a fresh inbox as its reply subject and collect
    the answers that arrive within ``wait`` seconds (at most ``limit``; with ``quiet``,
    until that long passes without a new one after the first): a question for every
    responder, such as ``$SRV.INFO``. Raises :class:`Unavailable`."""
    inbox = nc.new_inbox()
    answers: list[Msg] = []
    try:
        sub = await nc.subscribe(inbox, max_msgs=limit)
        try:
            await nc.publish(subject, body, reply=inbox)
            with anyio.move_on_after(wait) as scope:
                async for msg in sub.messages:
                    answers.append(msg)
                    if len(answers) >= limit:
                        break
                    if quiet:
                        scope.deadline = min(scope.deadline, anyio.current_time() + quiet)
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()
    except nats.errors.Error as exc:
        raise Unavailable(f"asking {subject}: {exc}") from exc
    return answers
