"""The NATS connection with actorbus's reliability defaults; publishing on it.

This module, :mod:`.requests` and :mod:`.server` are the only places that catch
``nats.errors``: they re-raise them as :mod:`.errors` classes.
"""

from __future__ import annotations

import functools
import logging
import re
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol.command import hpub_cmd

from .errors import BadRequest, PayloadTooLarge, Unauthorized, Unavailable
from .keys import Keypair, Signer
from .nkeys import encode_nkey_seed
from .subjects import inbox_of
from .throttle import LogThrottle
from .vouch import vouch_for

__all__ = [
    "NATS",
    "Msg",
    "connect",
    "message_size",
    "nats_answers",
    "on_reconnect",
    "on_refusal",
    "publish",
    "subscribe",
]

log = logging.getLogger("actorbus.bus")

PING_INTERVAL = 5  # nats-py's default is 120 s: far too slow to notice a dead server
MAX_OUTSTANDING_PINGS = 3
RECONNECT_WAIT = 0.5
RECONNECT_BUFFER = 8 * 1024 * 1024  # publishes kept while reconnecting
CONNECT_ATTEMPTS = 3


@asynccontextmanager
async def connect(
    url: str,
    *,
    name: str | None = None,
    key: Signer | None = None,
    token: Callable[[], str] | None = None,
    connect_timeout: float = 2.0,
) -> AsyncIterator[NATS]:
    """Connect to ``url`` (one URL, or several separated by commas: a cluster's seeds); on
    exit drain (finish in-flight work) and close.

    With ``key`` the connection authenticates as that key (a user nkey: it signs the
    server's nonce, PROTOCOL.md §5; an sr25519 key vouches for a fresh ed25519 one,
    :mod:`.vouch`) and receives on its own inboxes
    (:func:`~actorbus.bus.rights.inbox_of`); ``token`` makes what it presents with it
    each time it connects (a hosting ticket). A server without authorization ignores both.

    The first connection is tried a few times and fails with :class:`Unavailable`; once
    connected, the client pings every 5 s, reconnects forever with backoff and buffers
    publishes while it does.
    """
    holder: list[NATS] = []
    # Slow-consumer drops and reconnect failures come once per message or attempt: a
    # flood must not become a flood of log lines.
    throttle = LogThrottle(log)

    async def on_error(exc: Exception) -> None:
        refused = _PERMISSION.search(str(exc))
        # A refusal that a waiting request takes is that request's error (Forbidden): its
        # caller says it, or expects it (a caller's key may not read the registry).
        answered = bool(refused and holder and _refused(holder[0], *refused.groups()))
        # Before the first connection, failures end in one Unavailable: keep them quiet.
        level = logging.WARNING if holder and not answered else logging.DEBUG
        if isinstance(exc, nats.errors.SlowConsumerError):
            throttle.log(
                level,
                "slow consumer",
                "nats: %s: messages dropped unread (the subscriber's buffer is full)",
                exc.sub.subject,  # ours; the message's own subject is the sender's choice
            )
        else:
            throttle.log(level, type(exc).__name__, "nats: %s: %s", type(exc).__name__, exc)

    async def on_disconnected() -> None:
        if holder and not (holder[0].is_closed or holder[0].is_draining):
            log.warning("nats: disconnected from %s, reconnecting", url)

    async def on_reconnected() -> None:
        log.warning("nats: reconnected to %s", url)
        for callback in list(_reconnect_listeners.get(holder[0], ())):
            callback()

    # Seconds as floats: nats-py's connect() annotates them as int, and takes floats.
    options: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "reconnect_time_wait": RECONNECT_WAIT,
    }
    if key is not None:
        nkey = key if isinstance(key, Keypair) else Keypair.generate()
        options["nkeys_seed_str"] = encode_nkey_seed(nkey.seed)
        options["inbox_prefix"] = inbox_of(key.public_key)
        if nkey is not key:
            if token is not None:
                raise ValueError("only an ed25519 key connects with a hosting ticket")
            token = functools.partial(vouch_for, key, nkey.address)
    if token is not None:
        options["token"] = token
    try:
        nc = _Client()
        await nc.connect(
            servers=[u.strip() for u in url.split(",") if u.strip()],
            name=name,
            **options,
            ping_interval=PING_INTERVAL,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            allow_reconnect=True,
            max_reconnect_attempts=CONNECT_ATTEMPTS,
            pending_size=RECONNECT_BUFFER,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
    except nats.errors.AuthorizationError as exc:
        raise Unauthorized(
            f"NATS at {url} refused this connection"
            + (f" (key {key.address})" if key is not None else "")
            + ": its key may not connect, or may not do what it asked (the policy actor's"
            " log says why)"
        ) from exc
    except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
        raise Unavailable(
            f"cannot reach NATS at {url}: {exc} (start a node here with `actor up`, or point "
            "--nats or ACTOR_NATS_URL at a running NATS)"
        ) from exc
    holder.append(nc)
    # Connected: from now on, never give up on the server.
    nc.options["max_reconnect_attempts"] = -1
    try:
        yield nc
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await nc.drain()
            except (nats.errors.Error, OSError) as exc:
                log.debug("nats: drain failed: %s", exc)
        if not nc.is_closed:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await nc.close()


_HEADER_NAMES = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")
"""Header names joined by LF, each one nats-py writes as it is: a token."""
_HEADER_VALUES = re.compile(r"(?:\S(?:[^\r\n]*\S)?)?(?:\n(?:\S(?:[^\r\n]*\S)?)?)*")
"""Header values joined by LF, each one nats-py writes as it is: no CR or LF, nothing to
strip."""


class _Client(NATS):
    """nats-py's client, reading and writing headers in a third of the time. A request
    carries six headers and its reply three to five, and nats-py 2.16 spends per message
    6.6 µs reading six (it checks every character of every name in a Python generator)
    and 9.3 µs writing six (a regex, two strips and three encodes per header). Here the
    same rules cost 3.2 µs and 2.7 µs: one ``split`` per name when reading; when writing,
    names and values each checked by one regex over them all, the lines joined once, and
    nats-py's own path for anything those do not match (a name to strip or refuse, a value
    to clean).

    And a connection whose credentials expired connects again (as nats.go does), with
    fresh ones: nats-py 2.16 takes the server's ``User Authentication Expired`` for the
    end, and a replica whose credentials last ``replica_ttl`` exited each time."""

    async def _process_err(self, err_msg: str) -> None:
        if _EXPIRED in err_msg.lower():
            await self._process_op_err(nats.errors.StaleConnectionError())
            return
        await super()._process_err(err_msg)

    async def _send_publish(
        self,
        subject: str,
        reply: str,
        payload: bytes,
        payload_size: int,
        headers: dict[str, str] | None,
    ) -> None:
        # str.join, never formatting: a name may be a str enum (nats-py's own headers).
        try:
            names = "\n".join(headers) if headers else ""
            values = "\n".join(headers.values()) if headers else ""
        except TypeError:  # not all text: nats-py's path says what is wrong
            names = values = ""
        if not (
            names
            and subject
            and names.count("\n") == values.count("\n") == len(headers or ()) - 1
            and _HEADER_NAMES.fullmatch(names)
            and _HEADER_VALUES.fullmatch(values)
        ):
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        assert headers is not None
        lines = "\r\n".join(map(": ".join, headers.items()))
        block = b"NATS/1.0\r\n" + lines.encode() + b"\r\n\r\n"
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(hpub_cmd(subject, reply, block, payload))
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        parsed: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:  # not a header name: skipped, as nats-py does
                continue
            if len(key.split()) < 2:  # no whitespace inside a name
                parsed[key] = value.strip().decode("utf-8", "replace")
        return parsed


_EXPIRED = "authentication expired"
"""What the server says when it ends a connection whose credentials expired."""
_reconnect_listeners: weakref.WeakKeyDictionary[NATS, set[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)
_refusal_listeners: weakref.WeakKeyDictionary[NATS, Callable[[str], bool]] = (
    weakref.WeakKeyDictionary()
)
_PERMISSION = re.compile(r"permissions violation for (publish|subscription) to \"([^\"]*)\"", re.I)


def on_refusal(nc: NATS, listener: Callable[[str], bool]) -> None:
    """From now on, ``listener(subject)`` hears of each publish on ``subject`` that the
    server refused on ``nc`` (made by :func:`connect`; nats-py reports the subject in
    lower case) and says whether a caller was waiting for its answer (then the refusal
    is that caller's error, not a warning). One listener per connection."""
    _refusal_listeners[nc] = listener


def _refused(nc: NATS, kind: str, subject: str) -> bool:
    listener = _refusal_listeners.get(nc)
    return kind.lower() == "publish" and listener is not None and listener(subject.lower())


@contextmanager
def on_reconnect(nc: NATS, callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, ``callback()`` runs each time ``nc`` (made by :func:`connect`)
    is connected again after losing its server."""
    listeners = _reconnect_listeners.setdefault(nc, set())
    listeners.add(callback)
    try:
        yield
    finally:
        listeners.discard(callback)


async def nats_answers(url: str, *, timeout: float = 0.5) -> bool:
    """Whether a NATS server answers at ``url``: a TCP connection it greets with its
    ``INFO`` line within ``timeout`` seconds. A refused connection is a quick no (a NATS
    client would wait out its reconnect delay first)."""
    parsed = urlsplit(url if "://" in url else f"nats://{url}")
    try:
        with anyio.fail_after(timeout):
            async with await anyio.connect_tcp(
                parsed.hostname or "127.0.0.1", parsed.port or 4222
            ) as stream:
                return (await stream.receive(5)).startswith(b"INFO ")
    except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
        return False


def message_size(body: bytes, headers: dict[str, str] | None) -> int:
    """The bytes a message takes against the server's ``max_payload``: body and headers."""
    if not headers:
        return len(body)
    # "NATS/1.0\r\n" + "Name: value\r\n" per header + "\r\n"
    return len(body) + 12 + sum(len(k) + len(v.encode()) + 4 for k, v in headers.items())


def _check_size(nc: NATS, body: bytes, headers: dict[str, str] | None) -> None:
    # nats-py checks the body alone; a server closes the connection of a client that
    # sends more than max_payload with the headers, so the check is ours. A bound first
    # (a character is at most 4 bytes), in C: the exact count only near the limit.
    if headers:
        chars = sum(map(len, headers)) + sum(map(len, headers.values()))
        if len(body) + 4 * chars + 4 * len(headers) + 12 <= nc.max_payload:
            return
    size = message_size(body, headers)
    if size > nc.max_payload:
        raise PayloadTooLarge(
            f"message of {size} bytes is over the server's max payload of {nc.max_payload}"
        )


async def publish(
    nc: NATS, subject: str, body: bytes, headers: dict[str, str] | None = None, reply: str = ""
) -> None:
    """Publish one message (with a ``reply`` subject, if given); raises
    :class:`PayloadTooLarge` if it (headers included) is over the server's max payload,
    :class:`Unavailable` if the connection is closed or its reconnect buffer is full,
    :class:`BadRequest` for an invalid subject."""
    _check_size(nc, body, headers)
    try:
        await nc.publish(subject, body, reply=reply, headers=headers)
    except nats.errors.MaxPayloadError as exc:
        raise PayloadTooLarge(f"message over the server's max payload: {exc}") from exc
    except nats.errors.BadSubjectError as exc:
        raise BadRequest("invalid subject") from exc
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionDrainingError,
        nats.errors.OutboundBufferLimitError,
        OSError,
    ) as exc:
        raise Unavailable(f"cannot publish: {type(exc).__name__}") from exc


async def subscribe(nc: NATS, subject: str) -> Subscription:
    """A subscription to ``subject`` whose messages the caller iterates; raises
    :class:`Unavailable` if the connection cannot take it (closed, or draining)."""
    try:
        return await nc.subscribe(subject)
    except nats.errors.Error as exc:
        raise Unavailable(f"cannot subscribe to {subject}: {exc}") from exc
