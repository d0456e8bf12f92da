"""Commune bodies: a call signed the way commune's clients sign it, checked at the gateway
(which then calls on behalf of the signer, :mod:`.identity`).

``{"data", "signature", "address"}``, and optionally ``"crypto_type"``: ``"sr25519"``/``1``
or ``"ed25519"``/``0`` (without it, either): the caller's signature over ``data``
(``{"target": "<actor>/<fn>", "args", "kwargs", "timestamp"}``, its JSON text as commune
signs it), or over polkadot-js's ``<Bytes>`` wrap of it. Its target must be the route's
(a body signed for one function calls no other) and its timestamp within ``max_skew`` of
now.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import msgspec

from ...bus import BadRequest, Unauthorized, verify
from ...bus.keys import ED25519, SCHEMES, SR25519
from ...bus.wire import MSGPACK, check_nesting

__all__ = ["commune_like", "read_commune"]


def read_commune(raw: bytes, target: str, max_skew: float) -> tuple[bytes, str, bytes]:
    """Check a commune body for ``target`` (``actor/fn``), signed within ``max_skew`` of
    now; returns our call body, the address it was signed by and its signature (to take
    once). Raises :class:`BadRequest` for a malformed body, :class:`Unauthorized` for a
    bad signature, target or timestamp."""
    check_nesting(raw)
    try:
        envelope = json.loads(raw)
        data, signature, address = envelope["data"], envelope["signature"], envelope["address"]
        message = data if isinstance(data, str) else json.dumps(data)  # as commune signs
        check_nesting(message)
        decoded = json.loads(message)
        sig = bytes.fromhex(signature.removeprefix("0x"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadRequest(
            'a commune body is {"data": ..., "signature": <hex>, "address": <ss58>}'
        ) from None
    if not isinstance(address, str) or not isinstance(decoded, dict):
        raise BadRequest("commune data must be an object with target, args, kwargs and timestamp")
    _check_commune_signature(address, message.encode(), sig, envelope.get("crypto_type"))
    if decoded.get("target") != target:
        raise Unauthorized(f'commune data must name its target: "target": "{target}"')
    stamp = decoded.get("timestamp")
    if (
        not isinstance(stamp, int | float)
        or isinstance(stamp, bool)
        or not math.isfinite(stamp)  # NaN is never "too old"
        or abs(time.time() - stamp) > max_skew
    ):
        raise Unauthorized(f"commune timestamp must be within {max_skew:g}s of now")
    params = decoded.get("params")
    args: Any = decoded.get("args", params if isinstance(params, list) else [])
    kwargs: Any = decoded.get("kwargs", params if isinstance(params, dict) else {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise BadRequest("commune args must be a list and kwargs an object")
    return msgspec.json.encode({"args": args, "kwargs": kwargs}), address, sig


_CRYPTO_TYPES: dict[object, tuple[str, ...]] = {
    None: SCHEMES,
    0: (ED25519,),
    "ed25519": (ED25519,),
    1: (SR25519,),
    "sr25519": (SR25519,),
}
"""A commune body's ``crypto_type`` (commune and substrate-interface number the schemes)
and the schemes its signature is checked in: without one, either (an address does not
say, and commune's default key is sr25519; no signature verifies in both)."""


def _check_commune_signature(
    address: str, signed: bytes, signature: bytes, crypto_type: object
) -> None:
    """Check a commune body's signature of ``signed``, or of its ``<Bytes>`` wrap (as
    polkadot-js signs); raises :class:`Unauthorized` with the last scheme's reason."""
    schemes = _CRYPTO_TYPES.get(crypto_type) if isinstance(crypto_type, str | int | None) else None
    if schemes is None or isinstance(crypto_type, bool):
        raise BadRequest('a commune crypto_type is "ed25519" (0) or "sr25519" (1)')
    failure = Unauthorized("bad signature")
    for scheme in schemes:
        try:
            return verify(address, signed, signature, scheme, wrapped=True)
        except Unauthorized as exc:
            failure = exc
    raise failure


def commune_like(headers: dict[str, str], body: bytes) -> bool:
    """Whether a body is meant as a commune body (and checked as one)."""
    return (
        not headers.get("content-type", "").startswith(MSGPACK)
        and body[:1] == b"{"
        and b'"signature"' in body
        and b'"data"' in body
    )
