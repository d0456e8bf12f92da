"""JetStream for open jobs: a work queue read through pull consumers, and write-once records.

Errors from ``nats.js`` are translated to :class:`Unavailable` here, as in :mod:`.jetstream`.
"""

from __future__ import annotations

import contextlib
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext

from .errors import Unavailable
from .jetstream import JS_ERRORS as _JS_ERRORS

__all__ = [
    "QUEUE_MAX_WAITING",
    "Puller",
    "StoredMsg",
    "consumer_counts",
    "consumer_exists",
    "delete_consumer",
    "last_message",
    "message_at",
    "open_queue",
    "publish_deduplicated",
    "publish_once",
    "purge_subject",
]

_WRONG_LAST_SEQUENCE = (10071, 10164)

StoredMsg = api.RawStreamMsg


class Puller:
    """One durable pull consumer of a work-queue stream, filtered to one subject.

    Every puller bound to the same durable shares its messages: each goes to one of them,
    and comes back to any of them ``ack_wait`` seconds after it was last taken (or marked
    in progress) if nobody acknowledged it.
    """

    def __init__(self, sub: JetStreamContext.PullSubscription, stream: str, durable: str) -> None:
        self._sub = sub
        self.stream = stream
        self.durable = durable

    @classmethod
    async def bind(cls, nc: NATS, stream: str, durable: str) -> Puller:
        """Pull from durable ``durable`` of ``stream`` (made by :func:`open_queue`)."""
        try:
            sub = await nc.jetstream().pull_subscribe_bind(durable=durable, stream=stream)
        except _JS_ERRORS as exc:
            raise Unavailable(f"consumer {durable} of {stream}: {exc}") from exc
        return cls(sub, stream, durable)

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` messages: those waiting at once, else the first to arrive within
        ``timeout`` seconds; ``[]`` if none does."""
        try:
            return await self._sub.fetch(batch, timeout=timeout)
        except nats.errors.TimeoutError:
            return []
        except _JS_ERRORS as exc:
            raise Unavailable(f"fetching from {self.durable}: {exc}") from exc

    async def close(self) -> None:
        with contextlib.suppress(*_JS_ERRORS):  # if the connection is gone, so is the sub
            await self._sub.unsubscribe()


QUEUE_MAX_WAITING: Final = 64
"""Pulls a queue's consumer holds waiting at most (a jobs actor's replica waits with one at
a time per job). NATS bounds them by nothing but the consumer's own config: a jobs replica
that made its consumer so kept 300,000 waiting, 451 MiB of the server's memory (issue 30),
so the policy actor makes them (:func:`open_queue`)."""


async def open_queue(nc: NATS, stream: str, durable: str, subject: str, *, ack_wait: float) -> None:
    """Make durable ``durable`` of ``stream``, unless it exists: explicit acks, filtered
    to ``subject``, unlimited redeliveries (a message comes back ``ack_wait`` seconds after
    it was last taken, or marked in progress, if nobody acknowledged it), at most
    :data:`QUEUE_MAX_WAITING` pulls waiting."""
    js = nc.jetstream()
    config = api.ConsumerConfig(
        durable_name=durable,
        filter_subject=subject,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=-1,
        max_waiting=QUEUE_MAX_WAITING,
        deliver_policy=api.DeliverPolicy.ALL,
    )
    if await consumer_exists(nc, stream, durable):
        return
    try:
        await js.add_consumer(stream, config)
    except _JS_ERRORS as exc:
        raise Unavailable(f"consumer {durable} of {stream}: {exc}") from exc


async def consumer_exists(nc: NATS, stream: str, durable: str) -> bool:
    """Whether ``stream`` has the consumer ``durable``."""
    try:
        await nc.jetstream().consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        return False
    except _JS_ERRORS as exc:
        raise Unavailable(f"consumer {durable}: {exc}") from exc
    return True


async def consumer_counts(nc: NATS, stream: str, durable: str) -> tuple[int, int]:
    """``(waiting, taken)``: messages a consumer has not handed out, and those handed out
    and not acknowledged; ``(0, 0)`` if it does not exist."""
    try:
        info = await nc.jetstream().consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        return 0, 0
    except _JS_ERRORS as exc:
        raise Unavailable(f"consumer {durable}: {exc}") from exc
    return info.num_pending or 0, info.num_ack_pending or 0


async def delete_consumer(nc: NATS, stream: str, durable: str) -> None:
    """Delete a consumer (gone already is fine)."""
    try:
        await nc.jetstream().delete_consumer(stream, durable)
    except nats.js.errors.NotFoundError:
        pass
    except _JS_ERRORS as exc:
        raise Unavailable(f"deleting consumer {durable}: {exc}") from exc


async def purge_subject(nc: NATS, stream: str, subject: str) -> None:
    """Drop every message of ``stream`` on ``subject``."""
    try:
        await nc.jetstream().purge_stream(stream, subject=subject)
    except _JS_ERRORS as exc:
        raise Unavailable(f"purging {subject}: {exc}") from exc


async def publish_once(
    nc: NATS, subject: str, data: bytes, headers: dict[str, str] | None = None, *, after: int = 0
) -> bool:
    """Store ``data`` on ``subject`` unless the stream already holds a message there (one
    but message ``after``); returns whether this call stored it. The server decides
    (expected last subject sequence), so of several writers exactly one succeeds."""
    headers = {**(headers or {}), api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(after)}
    try:
        await nc.jetstream().publish(subject, data, headers=headers)
    except nats.js.errors.APIError as exc:
        if exc.err_code in _WRONG_LAST_SEQUENCE:
            return False
        raise Unavailable(f"publish to {subject}: {exc}") from exc
    except _JS_ERRORS as exc:
        raise Unavailable(f"publish to {subject}: {exc}") from exc
    return True


async def publish_deduplicated(
    nc: NATS, subject: str, data: bytes, msg_id: str, headers: dict[str, str] | None = None
) -> int:
    """Store ``data`` on ``subject`` once per ``msg_id`` within the stream's duplicate
    window (a repeat is acknowledged, not stored again); returns its sequence."""
    headers = {**(headers or {}), api.Header.MSG_ID: msg_id}
    try:
        ack = await nc.jetstream().publish(subject, data, headers=headers)
    except _JS_ERRORS as exc:
        raise Unavailable(f"publish to {subject}: {exc}") from exc
    return ack.seq


async def last_message(nc: NATS, stream: str, subject: str) -> StoredMsg | None:
    """The last message ``stream`` holds on ``subject``, or ``None`` (an API get: no
    connection a host runs asks for direct gets, :mod:`.stored`)."""
    try:
        return await nc.jetstream().get_msg(stream, subject=subject)
    except nats.js.errors.NotFoundError:
        return None
    except _JS_ERRORS as exc:
        raise Unavailable(f"reading {subject} from {stream}: {exc}") from exc


async def message_at(nc: NATS, stream: str, seq: int) -> StoredMsg | None:
    """Message ``seq`` of ``stream``, or ``None`` if it is gone."""
    try:
        return await nc.jetstream().get_msg(stream, seq=seq)
    except nats.js.errors.NotFoundError:
        return None
    except _JS_ERRORS as exc:
        raise Unavailable(f"reading message {seq} of {stream}: {exc}") from exc
