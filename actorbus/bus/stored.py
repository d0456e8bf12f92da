"""A stream's stored messages read one at a time through the JetStream API
(``STREAM.MSG.GET``): how every connection but the policy actor's reads stored state.

A direct get (``$JS.API.DIRECT.GET``) is answered by the stream itself, on whatever reply
subject its request names, and nats-server takes that answer as a request of the
account's own when the subject is an API one: a direct get of a registry entry answered
onto ``$JS.API.STREAM.DELETE.<stream>`` deleted that stream (issue 30). So no connection
a host runs may ask for direct gets (:mod:`.rights`). An answer of the API is sent as the
server's and acts on nothing; onto a stored subject it is stored, as any answer would be
(junk a record's signature shows for what it is).
"""

from __future__ import annotations

from typing import NamedTuple

import anyio
import msgspec
from nats.aio.client import Client as NATS

from .errors import NoResponders, ReplyTimeout, Unavailable
from .requests import request

__all__ = ["ApiError", "Stored", "by_sequence", "last_of", "walk"]

_CONCURRENCY = 32
"""Gets of one read in flight at once."""
_NOT_FOUND = 404


class Stored(NamedTuple):
    """One stored message: its subject, sequence, time (RFC 3339), headers and body."""

    subject: str
    seq: int
    time: str
    headers: dict[str, str]
    data: bytes


class _Message(msgspec.Struct):
    subject: str
    seq: int
    time: str = ""
    hdrs: bytes = b""
    data: bytes = b""


class ApiError(msgspec.Struct):
    """An error JetStream's API answers with (``{"error": {...}}``)."""

    code: int = 0
    err_code: int = 0
    description: str = ""


class _Answer(msgspec.Struct):
    message: _Message | None = None
    error: ApiError | None = None


_decode = msgspec.json.Decoder(_Answer).decode
_encode = msgspec.json.Encoder().encode


def _headers(block: bytes) -> dict[str, str]:
    """``NATS/1.0`` header lines as a dict (the first of a repeated name)."""
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\r\n")[1:]:
        name, colon, value = line.partition(":")
        if colon and name.strip() not in headers:
            headers[name.strip()] = value.strip()
    return headers


async def _get(nc: NATS, stream: str, ask: dict[str, object], timeout: float) -> Stored | None:
    """The message ``ask`` names, or ``None`` if there is none. Raises
    :class:`Unavailable`."""
    subject = f"$JS.API.STREAM.MSG.GET.{stream}"
    try:
        msg = await request(nc, subject, _encode(ask), {}, timeout)
        answer = _decode(msg.data)
    except (ReplyTimeout, NoResponders) as exc:
        raise Unavailable(f"reading {stream}: {exc.message}") from None
    except msgspec.ValidationError as exc:
        raise Unavailable(f"reading {stream}: JetStream answered {exc}") from None
    if answer.error is not None:
        if answer.error.code == _NOT_FOUND:
            return None
        raise Unavailable(f"reading {stream}: {answer.error.description[:200]}")
    if answer.message is None:
        raise Unavailable(f"reading {stream}: JetStream answered nothing")
    found = answer.message
    return Stored(found.subject, found.seq, found.time, _headers(found.hdrs), found.data)


async def last_of(
    nc: NATS, stream: str, subjects: list[str], *, timeout: float = 5.0
) -> list[Stored]:
    """The last message on each of ``subjects`` (no wildcards) that has one, asked at
    once, oldest first."""
    asks: list[dict[str, object]] = [{"last_by_subj": subject} for subject in subjects]
    return await _all(nc, stream, asks, timeout)


async def walk(nc: NATS, stream: str, subjects: str, *, timeout: float = 5.0) -> list[Stored]:
    """Every message on ``subjects`` (a filter), oldest first: one get after another, each
    for the next one after the last (a request per message, and nothing made on the
    server), within ``timeout`` seconds in all."""
    found: list[Stored] = []
    deadline = anyio.current_time() + timeout
    seq = 1
    while True:
        left = deadline - anyio.current_time()
        if left <= 0:
            raise Unavailable(f"reading {subjects} from {stream} timed out")
        stored = await _get(nc, stream, {"seq": seq, "next_by_subj": subjects}, left)
        if stored is None:
            return found
        found.append(stored)
        seq = stored.seq + 1


async def by_sequence(
    nc: NATS, stream: str, first: int, last: int, *, timeout: float = 5.0
) -> list[Stored]:
    """The messages from sequence ``first`` to ``last`` that are there, oldest first."""
    asks: list[dict[str, object]] = [{"seq": seq} for seq in range(first, last + 1)]
    return await _all(nc, stream, asks, timeout)


async def _all(
    nc: NATS, stream: str, asks: list[dict[str, object]], timeout: float
) -> list[Stored]:
    """The messages ``asks`` name that are there, oldest first, :data:`_CONCURRENCY`
    asked at a time, within ``timeout`` seconds in all."""
    found: list[Stored] = []
    failed: list[Unavailable] = []
    slots = anyio.Semaphore(_CONCURRENCY)

    async def one(ask: dict[str, object], scope: anyio.CancelScope) -> None:
        async with slots:
            try:
                stored = await _get(nc, stream, ask, timeout)
            except Unavailable as exc:
                failed.append(exc)
                scope.cancel()
                return
        if stored is not None:
            found.append(stored)

    with anyio.move_on_after(timeout) as waited:
        async with anyio.create_task_group() as tg:
            for ask in asks:
                tg.start_soon(one, ask, tg.cancel_scope)
    if failed:
        raise failed[0]
    if waited.cancelled_caught:
        raise Unavailable(f"reading {stream} timed out")
    return sorted(found, key=lambda s: s.seq)
