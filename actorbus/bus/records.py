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

A record that replaces others at the same key (the policy's) carries a version ``n``, a
positive integer its writer makes larger each time (``,"n":<n>`` after ``sig``, and
``\\n<n>`` after the digest in what is signed): a reader that saw version ``n`` of a key
counts no record of a smaller one there, so an old record put back (a replay: it still
verifies) changes nothing. A record without ``n`` is version 0.
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
    """A record that verified: its value (``None``: a removal), who wrote it, and its
    version (0: none)."""

    value: bytes | None
    by: str
    n: int = 0


class _Stored(msgspec.Struct):
    v: msgspec.Raw
    by: str
    sig: str
    n: int = 0


_stored = msgspec.json.Decoder(_Stored)


def record_signing_bytes(kind: str, name: str, value: bytes, n: int = 0) -> bytes:
    digest = hashlib.sha256(value).hexdigest()
    version = f"\n{n}" if n else ""
    return f"{PROTOCOL_VERSION}\nrecord\n{kind}\n{name}\n{digest}{version}".encode()


def sign_record(key: Keypair, kind: str, name: str, value: bytes | None, n: int = 0) -> bytes:
    """``value`` (JSON bytes, or ``None`` for a removal) as a record of ``kind`` at
    ``name``, signed by ``key``; with ``n``, as version ``n`` of that key's record."""
    raw = _NULL if value is None else value
    signature = key.sign(record_signing_bytes(kind, name, raw, n)).hex()
    signed = b'{"v":%s,"by":"%s","sig":"%s"' % (raw, key.address.encode(), signature.encode())
    return signed + (b',"n":%d}' % n if n else b"}")


def open_record(kind: str, name: str, data: bytes) -> Record:
    """The record ``data`` of ``kind`` at ``name``, its signature checked (the caller
    decides whether its writer is one it trusts). Raises :class:`Unauthorized` for
    anything else: not a record, or not signed so."""
    try:
        stored = _stored.decode(data)
    except UNDECODABLE:
        raise Unauthorized(f"not a signed record: {kind} {name}") from None
    raw = bytes(stored.v)
    if stored.n < 0:
        raise Unauthorized(f"a record's version is not positive: {kind} {name}")
    signed = record_signing_bytes(kind, name, raw, stored.n)
    try:
        verify(stored.by, signed, bytes.fromhex(stored.sig))
    except ValueError:
        raise Unauthorized(f"malformed record signature: {kind} {name}") from None
    return Record(None if raw == _NULL else raw, stored.by, stored.n)
