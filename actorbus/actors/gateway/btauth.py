"""Calls signed by a bittensor hotkey: the ``btauth/1`` headers that bittensor's SDK puts
on any HTTP request (``bittensor.http_auth.sign``, the successor of the dendrite), checked
here so the gateway calls *on behalf of* the hotkey, as for a commune body:

    X-Bittensor-Version: 1
    X-Bittensor-Hotkey: <the sender's SS58 address>
    X-Bittensor-Receiver: <the gateway's address>
    X-Bittensor-Nonce: <Unix time in nanoseconds>
    X-Bittensor-Crypto: ed25519            (absent: sr25519)
    X-Bittensor-Signature: 0x<128 hex>

signed in the declared scheme only over ``btauth/1\\n<scheme>\\n<METHOD>\\n<path and
?query as sent>\\n<hex sha256 of the body>\\n<nonce>\\n<hotkey>\\n<receiver>``. The
receiver must be this gateway (a request signed for another server, or for none, is
refused) and the nonce within ``max_skew`` of now; the gateway's replicas take each
(hotkey, nonce) once.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Final, NamedTuple

from ...bus import Unauthorized, verify
from ...bus.keys import ED25519, SR25519
from ...bus.ss58 import ADDRESS

__all__ = ["BtauthCall", "bittensor_signed", "check_btauth"]

_PREFIX: Final = "x-bittensor-"
_NONCE = re.compile(r"[0-9]{1,20}")
_SIGNATURE = re.compile(r"(?:0x)?([0-9a-fA-F]{128})")
_SCHEMES: Final = {SR25519: SR25519, ED25519: ED25519}


class BtauthCall(NamedTuple):
    """A verified btauth request: its sender and what marks it as taken."""

    hotkey: str
    mark: bytes


def bittensor_signed(headers: dict[str, str]) -> bool:
    """Whether a request (lower-case header names) is meant as btauth-signed."""
    return any(name.startswith(_PREFIX) for name in headers)


def _header(headers: dict[str, str], name: str, pattern: re.Pattern[str]) -> re.Match[str]:
    value = headers.get(_PREFIX + name)
    if value is None:
        raise Unauthorized(f"missing header X-Bittensor-{name.title()}")
    match = pattern.fullmatch(value)
    if match is None:
        raise Unauthorized(f"malformed header X-Bittensor-{name.title()}")
    return match


def check_btauth(
    headers: dict[str, str],
    method: str,
    target: str,
    body: bytes,
    receiver: str,
    max_skew: float,
) -> BtauthCall:
    """Check a btauth request's headers (lower-case names) over its ``method``, request
    ``target`` (path and query as sent) and raw ``body``, for the receiver ``receiver``;
    raises :class:`Unauthorized` saying why not (never echoing a header)."""
    if headers.get(_PREFIX + "version") != "1":
        raise Unauthorized("X-Bittensor-Version must be 1 (btauth/1)")
    hotkey = _header(headers, "hotkey", ADDRESS)[0]
    nonce = _header(headers, "nonce", _NONCE)[0]
    signature = bytes.fromhex(_header(headers, "signature", _SIGNATURE)[1])
    scheme = _SCHEMES.get(headers.get(_PREFIX + "crypto", SR25519))
    if scheme is None:
        raise Unauthorized("X-Bittensor-Crypto must be sr25519 (the default) or ed25519")
    if headers.get(_PREFIX + "receiver") != receiver:
        raise Unauthorized(f"the request must be signed for this gateway: {receiver}")
    if abs(time.time_ns() - int(nonce)) > max_skew * 1e9:
        raise Unauthorized(f"X-Bittensor-Nonce must be within {max_skew:g}s of now")
    signed = "\n".join(
        (
            "btauth/1",
            scheme,
            method.upper(),
            target,
            hashlib.sha256(body).hexdigest(),
            nonce,
            hotkey,
            receiver,
        )
    ).encode()
    verify(hotkey, signed, signature, scheme)
    return BtauthCall(hotkey, f"btauth/1\n{hotkey}\n{nonce}".encode())
