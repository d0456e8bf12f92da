"""Streamed replies on the wire (PROTOCOL.md §4a): a caller that accepts a stream says how
many chunks it lets the actor send ahead (``Actor-Stream``); the actor sends signed chunks
bound to the request's nonce and their index, each with the subject where the caller
grants more (``Actor-Credit``) or cancels (``Actor-Cancel``), signed by the caller; the
end is a reply signed over the count of chunks before it (:func:`.wire.end_signing_bytes`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from .errors import BadReply, BadRequest, Unauthorized
from .keys import ED25519, Keypair, Signer, verify, verify_protocol
from .ss58 import ADDRESS
from .wire import (
    _SIGNATURE,
    H_KEY,
    H_SCHEME,
    H_SIGNATURE,
    PROTOCOL_VERSION,
    _digest,
    _header,
    signer_scheme,
)

__all__ = [
    "H_CANCEL",
    "H_CHUNK",
    "H_CREDIT",
    "H_STREAM",
    "MAX_WINDOW",
    "chunk_signing_bytes",
    "control_signing_bytes",
    "sign_chunk",
    "sign_control",
    "stream_window",
    "verify_chunk",
    "verify_control",
]

H_STREAM: Final = "Actor-Stream"
H_CHUNK: Final = "Actor-Chunk"
H_CREDIT: Final = "Actor-Credit"
H_CANCEL: Final = "Actor-Cancel"

MAX_WINDOW = 1024
"""Chunks a caller may let an actor send ahead of what it has read, at most."""

_COUNT = re.compile(r"[0-9]{1,12}")


def stream_window(headers: dict[str, str] | None) -> int | None:
    """The request's ``Actor-Stream`` (1..1024 chunks ahead), or ``None`` without one;
    raises :class:`BadRequest` for a malformed one."""
    text = (headers or {}).get(H_STREAM)
    if text is None:
        return None
    if not _COUNT.fullmatch(text) or not 1 <= int(text) <= MAX_WINDOW:
        raise BadRequest(f"{H_STREAM} must be a whole number from 1 to {MAX_WINDOW}")
    return int(text)


def chunk_signing_bytes(nonce: str, seq: int, body: bytes) -> bytes:
    """``actorbus/1\\nchunk\\n<request nonce>\\n<seq>\\n<hex sha256 of body>`` as UTF-8."""

    return f"{PROTOCOL_VERSION}\nchunk\n{nonce}\n{seq}\n{_digest(body)}".encode()


def sign_chunk(key: Keypair, nonce: str, seq: int, body: bytes) -> dict[str, str]:
    """The headers of chunk ``seq`` (from 0) of the stream answering ``nonce``."""
    signature = key.sign(chunk_signing_bytes(nonce, seq, body)).hex()
    return {H_CHUNK: str(seq), H_KEY: key.address, H_SIGNATURE: signature}


def verify_chunk(headers: dict[str, str], body: bytes, nonce: str, seq: int, signer: str) -> None:
    """Check that a message is chunk ``seq`` of the stream answering ``nonce``, signed by
    ``signer``; raises :class:`BadReply` (a forged, reordered, repeated or missing chunk)."""
    if headers.get(H_CHUNK) != str(seq):
        raise BadReply(f"chunk {headers.get(H_CHUNK, '?')[:12]} came where {seq} was due")
    if headers.get(H_KEY) != signer:
        raise BadReply("a chunk signed by another key than the stream's")
    try:
        signature = _header(headers, H_SIGNATURE, _SIGNATURE)
        verify(signer, chunk_signing_bytes(nonce, seq, body), bytes.fromhex(signature))
    except Unauthorized as exc:
        raise BadReply(f"unverifiable chunk {seq}: {exc.message}") from None


def control_signing_bytes(nonce: str, credit: int | None) -> bytes:
    """What a caller signs to steer the stream answering ``nonce``:
    ``actorbus/1\\ncredit\\n<nonce>\\n<chunks read>`` or ``actorbus/1\\ncancel\\n<nonce>``."""
    if credit is None:
        return f"{PROTOCOL_VERSION}\ncancel\n{nonce}".encode()
    return f"{PROTOCOL_VERSION}\ncredit\n{nonce}\n{credit}".encode()


def sign_control(key: Signer, nonce: str, credit: int | None) -> dict[str, str]:
    """Headers granting chunks up to ``credit`` read + the window (``None``: cancel)."""
    headers = {H_KEY: key.address}
    if key.scheme != ED25519:
        headers[H_SCHEME] = key.scheme
    if credit is None:
        headers[H_CANCEL] = "1"
    else:
        headers[H_CREDIT] = str(credit)
    headers[H_SIGNATURE] = key.sign_protocol(control_signing_bytes(nonce, credit)).hex()
    return headers


def verify_control(
    headers: dict[str, str] | None, nonce: str, may_steer: Callable[[str], bool]
) -> int | None:
    """The chunks read a credit message reports, or ``None`` for a cancel; raises
    :class:`Unauthorized` unless a key ``may_steer`` the stream answering ``nonce`` (its
    request's signer, or a trusted forwarder) signed it for that stream."""
    headers = headers or {}
    caller = _header(headers, H_KEY, ADDRESS)
    if not may_steer(caller):
        raise Unauthorized("a stream is steered by the key that signed its request only")
    credit: int | None = None
    if H_CANCEL not in headers:
        credit = int(_header(headers, H_CREDIT, _COUNT))
    signature = _header(headers, H_SIGNATURE, _SIGNATURE)
    signed = control_signing_bytes(nonce, credit)
    verify_protocol(caller, signed, bytes.fromhex(signature), signer_scheme(headers))
    return credit
