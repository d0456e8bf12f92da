"""Signed records: what actorbus keeps on JetStream (policy entries, registry entries, audit
records, log lines) is signed by its writer, so that a NATS that lets strangers write
(misconfigured, or shared) cannot forge what hosts and clients trust (PROTOCOL.md §5).

A record is the JSON object

    {"v": <the value, JSON; null for a removal>, "by": "<writer address>", "sig": "<hex>"}

where ``sig`` is the writer's ed25519 signature over
``actorbus/2\\nrecord\\n<kind>\\n<name>\\n<hex sha256 of v's bytes as stored>``: ``kind`` says
what the record is (a bucket's or a stream's name), ``name`` where it is (a key, a
subject), so a record cannot be moved to another key or replayed as another kind. A
removal is a record too (``v`` is ``null``): a bare delete is no one's word.
"""

from __future__ import annotations

import hashlib

import msgspec

from .errors import Unauthorized
from .keys import Keypair, verify
from .wire import PROTOCOL_VERSION, UNDECODABLE

__all__ = ["Record", "open_record", "record_signing_bytes", "sign_record"]

_NULL = b"null"


class Record(msgspec.Struct, frozen=True):
    """A record that verified: its value (``None``: a removal) and who wrote it."""

    value: bytes | None
    by: str


class _Stored(msgspec.Struct):
    v: msgspec.Raw
    by: str
    sig: str


_stored = msgspec.json.Decoder(_Stored)


def record_signing_bytes(kind: str, name: str, value: bytes) -> bytes:
    digest = hashlib.sha256(value).hexdigest()
    return f"{PROTOCOL_VERSION}\nrecord\n{kind}\n{name}\n{digest}".encode()


def sign_record(key: Keypair, kind: str, name: str, value: bytes | None) -> bytes:
    """``value`` (JSON bytes, or ``None`` for a removal) as a record of ``kind`` at
    ``name``, signed by ``key``."""
    raw = _NULL if value is None else value
    signature = key.sign(record_signing_bytes(kind, name, raw)).hex()
    return b'{"v":%s,"by":"%s","sig":"%s"}' % (raw, key.address.encode(), signature.encode())


def open_record(kind: str, name: str, data: bytes) -> Record:
    """The record ``data`` of ``kind`` at ``name``, its signature checked (the caller
    decides whether its writer is one it trusts). Raises :class:`Unauthorized` for
    anything else: not a record, or not signed so."""
    try:
        stored = _stored.decode(data)
    except UNDECODABLE:
        raise Unauthorized(f"not a signed record: {kind} {name}") from None
    raw = bytes(stored.v)
    try:
        verify(stored.by, record_signing_bytes(kind, name, raw), bytes.fromhex(stored.sig))
    except ValueError:
        raise Unauthorized(f"malformed record signature: {kind} {name}") from None
    return Record(None if raw == _NULL else raw, stored.by)
