"""An actorbus key as a NATS nkey: the same ed25519 key, another spelling.

NATS names ed25519 keys by role: ``U...`` users, ``A...`` accounts, ``N...`` servers, and
their seeds ``SU...``, ``SA...``. An nkey is base32 (RFC 4648, no padding) of a prefix
byte, the 32 key bytes and a CRC-16/XMODEM of both (little-endian). A caller connects
with its actorbus key as a user nkey (it signs the server's nonce with it), so the
server, and the policy behind it, know who holds the connection.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from .errors import Unauthorized

__all__ = ["ACCOUNT", "SERVER", "USER", "decode_nkey", "encode_nkey", "encode_nkey_seed"]

USER: Final = 20 << 3
ACCOUNT: Final = 0
SERVER: Final = 13 << 3
_SEED: Final = 18 << 3


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _encode(raw: bytes) -> str:
    checked = raw + _crc16(raw).to_bytes(2, "little")
    return base64.b32encode(checked).decode().rstrip("=")


def encode_nkey(public_key: bytes, prefix: int = USER) -> str:
    """The nkey of a 32-byte ed25519 public key (``U...`` for ``USER``)."""
    return _encode(bytes([prefix]) + public_key)


def encode_nkey_seed(seed: bytes, prefix: int = USER) -> str:
    """The nkey seed of a 32-byte ed25519 seed (``SU...`` for ``USER``): what a NATS client
    connects with."""
    return _encode(bytes([_SEED | prefix >> 5, (prefix & 31) << 3]) + seed)


def decode_nkey(nkey: str, prefix: int = USER) -> bytes:
    """The 32-byte public key of an nkey of role ``prefix``; raises :class:`Unauthorized`
    for anything else (another role, a bad length or checksum)."""
    if len(nkey) != 56:
        raise Unauthorized("malformed nkey: an nkey is 56 base32 characters")
    try:
        raw = base64.b32decode(nkey)
    except (binascii.Error, ValueError):
        raise Unauthorized("malformed nkey: not base32") from None
    body, checksum = raw[:-2], raw[-2:]
    if body[0] != prefix or len(body) != 33:
        raise Unauthorized("malformed nkey: not a key of the expected role")
    if _crc16(body).to_bytes(2, "little") != checksum:
        raise Unauthorized("malformed nkey: bad checksum")
    return body[1:]
