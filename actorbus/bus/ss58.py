"""SS58 addresses (network prefix 42, the ``5...`` form substrate, bittensor and commune
show): how every key, ed25519 or sr25519, is named on the wire and in the policy."""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Final

from .errors import Unauthorized

__all__ = [
    "ADDRESS",
    "ADDRESS_SHAPE",
    "SS58_PREFIX",
    "address_to_public_key",
    "public_key_to_address",
]

SS58_PREFIX = 42
ADDRESS_SHAPE: Final = "[1-9A-HJ-NP-Za-km-z]{47,48}"
"""What an address looks like (base58, 47-48 characters), checked before decoding it."""
ADDRESS: Final = re.compile(ADDRESS_SHAPE)
_SS58_CONTEXT = b"SS58PRE"
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_ADDRESS_LENGTHS = (47, 48)  # base58 of 35 bytes (prefix, key, checksum)


def _b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, rem = divmod(number, 58)
        out.append(_B58_ALPHABET[rem])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    number = 0
    for char in text:
        try:
            number = number * 58 + _B58_INDEX[char]
        except KeyError:
            raise ValueError(f"invalid base58 character {char!r}") from None
    pad = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return b"\0" * pad + body


def _ss58_checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(_SS58_CONTEXT + payload, digest_size=64).digest()[:2]


def public_key_to_address(public_key: bytes) -> str:
    """The SS58 address (network prefix 42, the ``5...`` form) of a 32-byte public key."""
    if len(public_key) != 32:
        raise ValueError("a public key is exactly 32 bytes")
    payload = bytes([SS58_PREFIX]) + public_key
    return _b58encode(payload + _ss58_checksum(payload))


@functools.lru_cache(maxsize=8192)
def address_to_public_key(address: str) -> bytes:
    """The 32-byte public key inside an SS58 address; checks prefix, length and checksum.

    Raises :class:`Unauthorized` for anything that is not a well-formed prefix-42 address.
    Whether the key is a valid point is the verifier's to check: an address does not say
    which scheme (ed25519 or sr25519) its key is for (:func:`actorbus.bus.keys.verify`).
    """
    if not _ADDRESS_LENGTHS[0] <= len(address) <= _ADDRESS_LENGTHS[1]:
        # Base58 decoding is quadratic in its input: never start on anything longer.
        raise Unauthorized("malformed address: an address is 47-48 base58 characters")
    try:
        raw = _b58decode(address)
    except ValueError:
        raise Unauthorized("malformed address: not base58") from None
    if len(raw) != 35 or raw[0] != SS58_PREFIX:
        raise Unauthorized("malformed address: not a 32-byte key with SS58 prefix 42")
    payload, checksum = raw[:33], raw[33:]
    if _ss58_checksum(payload) != checksum:
        raise Unauthorized("malformed address: bad checksum")
    return payload[1:]
