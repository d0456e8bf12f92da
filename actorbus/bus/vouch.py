"""How a caller with an sr25519 key connects to NATS.

A NATS user proves its key by signing the server's nonce with an nkey, and nkeys are
ed25519. So a client whose key is sr25519 makes a fresh ed25519 key for the connection,
signs the nonce with it, and presents as its auth token the caller's signed word that
this connection key speaks for it, made anew at each (re)connect:

    sr25519;<caller address>;<expires ms>;<signature, 128 hex>

signed by the caller (sr25519, over ``sr25519\\n`` and the signing bytes, PROTOCOL.md
§3a) over ``actorbus/2\\nconnect\\n<connection key's address>\\n<expires ms>``. The auth
callout checks the nonce by the connection key, then this: the connection is then the
caller's (its role, its inbox). A vouch seen on the wire is useless without the
connection key's secret, which never leaves the client's memory.
"""

from __future__ import annotations

import re
import time
from typing import Final

from .errors import Unauthorized
from .keys import Signer, address_to_public_key, verify_protocol
from .sr25519 import SR25519
from .ss58 import ADDRESS_SHAPE
from .wire import PROTOCOL_VERSION

__all__ = ["VOUCH_SECONDS", "is_vouch", "read_vouch", "vouch_for"]

VOUCH_SECONDS: Final = 300.0
"""How long a vouch is good for: a connection presents it once, when it (re)connects."""
_SKEW_SECONDS = 60.0
_VOUCH = re.compile(f"sr25519;({ADDRESS_SHAPE});([0-9]{{1,13}});([0-9a-f]{{128}})")


def _signing_bytes(connection: str, expires: int) -> bytes:
    return f"{PROTOCOL_VERSION}\nconnect\n{connection}\n{expires}".encode()


def vouch_for(caller: Signer, connection: str) -> str:
    """``caller``'s vouch that the key of address ``connection`` speaks for it."""
    expires = int((time.time() + VOUCH_SECONDS) * 1000)
    signature = caller.sign_protocol(_signing_bytes(connection, expires)).hex()
    return f"{caller.scheme};{caller.address};{expires};{signature}"


def is_vouch(token: str) -> bool:
    """Whether a CONNECT's auth token is meant as a vouch (not a hosting ticket)."""
    return token.startswith(f"{SR25519};")


def read_vouch(token: str, connection: str) -> tuple[str, bytes]:
    """The address and public key of the caller that vouches for the connection key of
    address ``connection``; raises :class:`Unauthorized` for a malformed, forged, expired
    or too long-lived vouch."""
    match = _VOUCH.fullmatch(token)
    if match is None:
        raise Unauthorized("malformed sr25519 vouch")
    caller, expires_text, signature = match.groups()
    expires = int(expires_text)
    verify_protocol(caller, _signing_bytes(connection, expires), bytes.fromhex(signature), SR25519)
    now_ms = time.time() * 1000
    if expires < now_ms:
        raise Unauthorized("sr25519 vouch expired")
    if expires > now_ms + (VOUCH_SECONDS + _SKEW_SECONDS) * 1000:
        raise Unauthorized(f"an sr25519 vouch is good for {VOUCH_SECONDS:g}s at most")
    return caller, address_to_public_key(caller)
