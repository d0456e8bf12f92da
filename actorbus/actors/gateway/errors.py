"""The gateway's one error shape: every refusal, its own or an actor's, is a JSON body
``{"error", "code", "id"}``, the message printable and at most 512 characters (never a
traceback, never more than a short echo of the caller's input)."""

from __future__ import annotations

import secrets

import msgspec

from ...bus import ActorError, printable

__all__ = ["Refused", "error_json", "new_error_id"]

_encode = msgspec.json.Encoder().encode


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
