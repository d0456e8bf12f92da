"""What a caller makes of an answer: a verified reply's result (or its error, raised as
its :class:`ActorError` class), and the deadline to advertise so the actor's 408 comes
before the caller gives up."""

from __future__ import annotations

from typing import Any

import msgspec

from ..bus import RateLimited, ReplyMeta, codec_for, error_for_status

__all__ = ["Reply", "advertised_timeout"]


def advertised_timeout(timeout: float) -> float:
    """The ``Actor-Timeout`` to send when waiting ``timeout`` seconds: a little less, so
    the actor's 408 arrives before the caller gives up."""
    return timeout - min(timeout / 4, 0.5)


class Reply(msgspec.Struct, frozen=True):
    """A verified reply: its checked headers (``meta``), body and raw headers."""

    meta: ReplyMeta
    body: bytes
    headers: dict[str, str]

    def result(self) -> Any:
        """The decoded value, or the reply's error raised as its :class:`ActorError` class."""
        meta = self.meta
        codec = codec_for(meta.content_type)
        if 200 <= meta.status < 300:
            return codec.decode_any(self.body)
        error = codec.decode_error(self.body)
        message = error.error if error else meta.error
        error_id = error.id if error else None
        cls = error_for_status(meta.status)
        if cls is RateLimited:
            raise RateLimited(message, retry_after=meta.retry_after or 1.0, error_id=error_id)
        raise cls(message, error_id=error_id)
