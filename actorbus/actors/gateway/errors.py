"""The gateway's one error shape: every refusal, its own or an actor's, is a JSON body
``{"error", "code", "id"}``, the message printable and at most 512 characters (never a
traceback, never more than a short echo of the caller's input). What the gateway did not
expect is a 500 of that shape too, its traceback logged under the id, throttled like a
replica's; a web caller that leaves mid-request is no error at all."""

from __future__ import annotations

import logging
import secrets

import msgspec
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...bus import ActorError, LogThrottle, printable

__all__ = ["SECURITY_HEADERS", "ErrorShape", "Refused", "error_json", "new_error_id"]

log = logging.getLogger("actorbus.gateway")

_encode = msgspec.json.Encoder().encode

DATA_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
"""What every response carries (a data response also the CSP :data:`DATA_POLICY`)."""


class Refused(ActorError):
    """A status the gateway answers itself that has no class of its own (408, 415, 421,
    431)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.code = status


def new_error_id() -> str:
    return secrets.token_hex(6)


def error_json(status: int, message: str, error_id: str = "") -> bytes:
    """The body of an error response."""
    return _encode(
        {"error": printable(message, 512), "code": status, "id": error_id or new_error_id()}
    )


class ErrorShape:
    """Answers what escapes the app with a 500 of the one shape (or nothing, if the
    response had begun or the caller has gone)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._throttle = LogThrottle(log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except ClientDisconnect:
            return  # the caller left: nobody to answer
        except Exception as exc:
            error_id = new_error_id()
            self._throttle.log(
                logging.ERROR,
                "unexpected",
                "gateway: %s %s failed (error id %s)",
                scope.get("method", ""),
                printable(scope.get("path", ""), 120),
                error_id,
                exc_info=exc,
            )
            if started:
                return
            body = error_json(500, "the gateway failed on this request", error_id)
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
