"""The one exception tree of actorbus: each class carries the status code of PROTOCOL.md.

The server raises these, the reply carries ``status``, the client raises the same class
back (:func:`error_for_status`), the CLI maps them to exit codes and the gateway to HTTP.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ActorError",
    "BadReply",
    "BadRequest",
    "DeadlineExceeded",
    "Forbidden",
    "Gone",
    "HandlerError",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ReplyTimeout",
    "Unauthorized",
    "Unavailable",
    "error_for_status",
    "excerpt",
    "printable",
]


class ActorError(Exception):
    """Base of every actorbus error; ``status`` is the wire status code.

    ``error_id`` is set on errors that came back in a reply (the id the actor logged the
    details under), so a user can quote it to the actor's operator.
    """

    status: ClassVar[int] = 500

    def __init__(self, message: str = "", *, error_id: str | None = None) -> None:
        super().__init__(message or type(self).__name__)
        self.message = message or type(self).__name__
        self.error_id = error_id

    def __str__(self) -> str:
        suffix = f" (error id {self.error_id})" if self.error_id else ""
        return f"{self.status} {self.message}{suffix}"


class BadRequest(ActorError):
    """Malformed envelope, body or arguments."""

    status = 400


class Unauthorized(ActorError):
    """Missing or bad signature, stale or future time, replayed nonce."""

    status = 401


class Forbidden(ActorError):
    """Denied by policy."""

    status = 403


class NotFound(ActorError):
    """No such function (or no such actor in the registry)."""

    status = 404


class NoSuchActor(NotFound):
    """No actor of that name is in the registry (client side): a mistyped name, not an
    outage."""


class DeadlineExceeded(ActorError):
    """The handler passed its deadline, or the request waited past it."""

    status = 408


class PayloadTooLarge(ActorError):
    """The body is over the size limit."""

    status = 413


class RateLimited(ActorError):
    """The caller's quota is exhausted; retry after ``retry_after`` seconds."""

    status = 429

    def __init__(
        self, message: str = "", *, retry_after: float = 1.0, error_id: str | None = None
    ) -> None:
        super().__init__(message, error_id=error_id)
        self.retry_after = retry_after


class HandlerError(ActorError):
    """The handler raised; details stay in the actor's log under ``error_id``."""

    status = 500


class BadReply(ActorError):
    """A reply whose signature or signer does not check out (client side)."""

    status = 502


class Unavailable(ActorError):
    """Overloaded, shutting down, no responders, or the NATS server is unreachable."""

    status = 503


class Gone(Unavailable):
    """State that existed is missing (a bucket deleted): waiting cannot bring it back, and
    making it anew would lose what it held."""


class NoResponders(Unavailable):
    """No subscriber took the request (no replica serves it, or none is connected right
    now): it was not delivered, so sending it again is safe for any call."""


class ReplyTimeout(ActorError):
    """No reply arrived within the caller's timeout (client side)."""

    status = 504


_BY_STATUS: dict[int, type[ActorError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        DeadlineExceeded,
        PayloadTooLarge,
        RateLimited,
        HandlerError,
        BadReply,
        Unavailable,
        ReplyTimeout,
    )
}


def printable(text: str, limit: int, *, ascii_only: bool = False) -> str:
    """``text`` as one printable line of at most ``limit`` characters (plus a trailing
    ``…`` if cut): control characters, newlines and bidi overrides are escaped. With
    ``ascii_only`` (a header value), every other non-ASCII character is escaped too and a
    cut is marked ``...``."""
    head = text[: limit + 1]
    if not head.isprintable() or (ascii_only and not head.isascii()):
        head = "".join(
            c if c.isprintable() and (c.isascii() or not ascii_only) else _escape(c) for c in head
        )
    if len(head) <= limit and len(text) <= limit:
        return head
    return head[:limit] + ("..." if ascii_only else "…")


def _escape(char: str) -> str:
    return char.encode("unicode_escape", "backslashreplace").decode("ascii")


def excerpt(text: str, limit: int = 48) -> str:
    """``text`` quoted and fit to quote in an error message (see :func:`printable`), with
    its full length noted when cut. Use it wherever a caller's input would reach a message:
    a reply or a log line never echoes more than this."""
    short = printable(text, limit)
    cut = short.endswith("…") and not text.endswith("…")
    return f"'{short}' ({len(text)} characters)" if cut else f"'{short}'"


def error_for_status(status: int) -> type[ActorError]:
    """The error class for a status code; unknown codes map to :class:`ActorError`."""
    return _BY_STATUS.get(status, ActorError)
