"""Replies: the only place a replica publishes an answer to a request.

Every request with a reply subject is answered exactly once. The pipeline makes sure each
accepted call reaches this module (refused, answered by a worker, expired in the queue, or
abandoned at shutdown); this module makes sure it is published at most once, never as
something the server would refuse: a result too large for the server's max payload
becomes a 500 saying so, an error reply that cannot be sent as built falls back to a
generic one that does. Replies go only to subjects that look like inboxes
(:func:`~actorbus.bus.subjects.is_reply_subject`), so no request can make an actor
publish onto another actor's subjects; requests without one are dropped unread and
counted, never verified (nobody could hear the answer). Every answer is counted in the
stats; refusals and failures are logged through a :class:`~actorbus.bus.LogThrottle`, so
a flood of bad requests costs a few lines and a count, not a line each.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from typing import Any

from ..bus import (
    NATS,
    ActorError,
    HandlerError,
    Keypair,
    LogThrottle,
    RateLimited,
    excerpt,
    message_size,
    printable,
    publish,
)
from ..bus.chunks import sign_chunk
from ..bus.subjects import is_reply_subject
from ..bus.tracing import current_trace, trace_id
from ..bus.wire import ErrorBody, codec_for, sign_reply
from .actor import Call
from .stats import OTHER, FunctionStats

__all__ = ["ERROR_LIMIT", "Replies"]

ERROR_LIMIT = 512
"""Characters of an error message in a reply body at most."""


class Replies:
    """Signs, sends, counts and logs the replies of one replica."""

    def __init__(
        self,
        *,
        nc: NATS,
        key: Keypair,
        log: logging.Logger,
        functions: list[str],
        reply_prefixes: tuple[str, ...],
    ) -> None:
        self.nc = nc
        self.key = key
        self.log = log
        self.reply_prefixes = reply_prefixes
        self.stats: dict[str, FunctionStats] = {fn: FunctionStats() for fn in functions}
        self.stats[OTHER] = FunctionStats()
        self.throttle = LogThrottle(log)
        # Error ids only have to be unique (to find the log line), not unpredictable: a
        # random prefix per replica and a counter cost far less than a random id each,
        # and a flood of refusals asks for one per request.
        self._id_prefix = secrets.token_hex(3)
        self._ids = itertools.count()

    def error_id(self) -> str:
        """A new 12-hex-character error id."""
        return f"{self._id_prefix}{next(self._ids) & 0xFFFFFF:06x}"

    def stats_of(self, fn: str) -> FunctionStats:
        return self.stats.get(fn) or self.stats[OTHER]

    def can_reply(self, reply_to: str | None) -> bool:
        return is_reply_subject(reply_to, self.reply_prefixes)

    def drop(self, fn: str, reply_to: str | None) -> None:
        """Count (and, throttled, log) a request dropped unread for its reply subject."""
        self.stats_of(fn).dropped += 1
        if reply_to:
            self.throttle.log(
                logging.INFO,
                "reply subject refused",
                "%s: request dropped unread: reply subject %s is not an inbox (%s)",
                printable(fn, 64),
                excerpt(reply_to),
                ",".join(self.reply_prefixes),
            )
        else:
            self.throttle.log(
                logging.DEBUG,
                "no reply subject",
                "%s: request dropped unread: it has no reply subject",
                printable(fn, 64),
            )

    def internal(
        self, call: Call, exc: BaseException, message: str = "internal error"
    ) -> HandlerError:
        """A 500 for an unexpected exception: the caller gets an error id, the log (throttled)
        gets the traceback under that id."""
        error = HandlerError(message, error_id=self.error_id())
        self.throttle.log(
            logging.ERROR,
            "500 traceback",
            "%s raised (error id %s)",
            printable(call.fn, 64),
            error.error_id,
            exc_info=exc,
            error_id=error.error_id or "",
            trace_id=trace_id(call.trace),
        )
        return error

    async def error(self, call: Call, exc: ActorError) -> None:
        """Answer ``call`` with ``exc``'s status, message and error id."""
        error_id = exc.error_id or self.error_id()
        message = printable(exc.message, ERROR_LIMIT)
        body = codec_for(call.content_type).encode(ErrorBody(message, exc.status, error_id))
        retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
        await self.send(
            call, exc.status, body, error=message, error_id=error_id, retry_after=retry_after
        )

    async def send(
        self,
        call: Call,
        status: int,
        body: bytes,
        *,
        error: str = "",
        error_id: str = "",
        retry_after: float | None = None,
    ) -> None:
        """Sign and publish the reply to ``call`` unless it was answered already; count it
        and log it (successes at DEBUG, the rest at INFO, throttled)."""
        if call.replied:
            return
        call.replied = True
        if call.span is not None:  # spans on: the call's ends with its answer
            if call.stage is not None and call.stage.end_time is None:
                call.stage.end()
            call.span.set_attribute("actorbus.status", status)
            call.span.end()
        headers = self._sign(call, status, body, error, retry_after)
        # Reply headers are a few hundred bytes: only a large body needs the exact sum.
        if len(body) + 1024 > self.nc.max_payload and (
            message_size(body, headers) > self.nc.max_payload
        ):
            # Too large to send as built: say so instead, in a reply that always fits.
            if status < 400:
                error = (
                    f"the result is {len(body)} bytes, over the reply limit of "
                    f"{self.nc.max_payload} bytes"
                )
                status, error_id = HandlerError.status, self.error_id()
            else:
                error = "the error reply was too large to send"
            body = codec_for(call.content_type).encode(ErrorBody(error, status, error_id))
            headers = self._sign(call, status, body, error, retry_after)
        now = time.monotonic()
        elapsed_ns = int((now - call.received) * 1e9)
        stats = self.stats_of(call.fn)
        stats.record(status, elapsed_ns, printable(error, 200))
        if call.started:
            stats.ran(call.started - call.received, now - call.started)
        if status < 400:
            if self.log.isEnabledFor(logging.DEBUG):
                self.log.debug(
                    "%s from %s -> %d in %.2f ms", call.fn, call.caller, status, elapsed_ns / 1e6
                )
        else:
            self.throttle.log(
                logging.INFO,
                str(status),
                "%s from %s -> %d in %.2f ms: %s (error id %s)",
                printable(call.fn, 64),
                call.caller or "?",
                status,
                elapsed_ns / 1e6,
                printable(error, 200),
                error_id,
                error_id=error_id,
                trace_id=trace_id(call.trace),
            )
        try:
            await publish(self.nc, call.reply_to, body, headers)
        except ActorError as exc:  # the connection is gone: nobody can be answered now
            self.throttle.log(
                logging.WARNING,
                "reply not sent",
                "%s: reply not sent: %s",
                printable(call.fn, 64),
                exc.message,
            )

    async def chunk(self, call: Call, item: Any, control: str) -> None:
        """Encode, sign and publish ``item`` as the next chunk of ``call``'s streamed reply
        (the caller steers the stream on ``control``); raises :class:`HandlerError` for an
        item that cannot be encoded or sent."""
        assert call.chunks is not None
        try:
            body = codec_for(call.content_type).encode(item)
        except TypeError as exc:
            raise self.internal(call, exc, f"chunk {call.chunks} is not serializable") from None
        headers = sign_chunk(self.key, call.nonce, call.chunks, body) | current_trace()
        if message_size(body, headers) > self.nc.max_payload:
            raise HandlerError(
                f"chunk {call.chunks} is {len(body)} bytes, over the limit of "
                f"{self.nc.max_payload} bytes",
                error_id=self.error_id(),
            )
        await publish(self.nc, call.reply_to, body, headers, reply=control)
        call.chunks += 1
        self.stats_of(call.fn).chunks += 1

    def _sign(
        self, call: Call, status: int, body: bytes, error: str, retry_after: float | None
    ) -> dict[str, str]:
        return sign_reply(
            self.key,
            call.nonce,
            status,
            body,
            content_type=call.content_type,
            error=error,
            retry_after=retry_after,
            chunks=call.chunks,
            session_key=call.session_key,
        )
