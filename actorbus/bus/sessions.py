"""Sessions on the wire (PROTOCOL.md §4b): one signed handshake, then HMAC-SHA256 per call.

A caller asks an actor for a session with a signed call of ``_session`` carrying a fresh
X25519 public key. The replica answers (signed) with a *ticket*, ``<id>.<expires ms>``, and
the session key sealed to that X25519 key. The session key is not stored anywhere: it is
derived from a secret only the actor's replicas hold (their shared seed) and the ticket,

    session key = HMAC-SHA256(HMAC-SHA256(seed, "actorbus/2\\nsessions"),
                              "actorbus/2\\nsession\\n<actor>\\n<caller address>\\n<ticket>")

so any replica can check a session call, as a TLS server checks a session ticket, with no
state shared between replicas. A session call carries ``Actor-Session: <ticket>`` and
``Actor-Mac`` (HMAC-SHA256 of the session key over the request's signing bytes) where a
signed call carries ``Actor-Signature``; its reply carries ``Actor-Mac`` over the reply's
signing bytes. Freshness, replay and policy are those of a signed call.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from typing import Final

import msgspec
import nacl.exceptions
import nacl.public

from .errors import BadReply, BadRequest, Unauthorized
from .keys import Keypair
from .wire import (
    _MAC,
    H_MAC,
    JSON,
    PROTOCOL_VERSION,
    RequestMeta,
    Seal,
    _header,
    mac,
    request_headers,
    verify_request,
)

__all__ = [
    "H_MAC",
    "H_SESSION",
    "MAX_SESSION_TTL",
    "SESSION_FN",
    "SessionGrant",
    "SessionSecret",
    "mac_request",
    "open_grant",
    "session_seal",
]

H_SESSION: Final = "Actor-Session"
SESSION_FN: Final = "_session"
"""The function a caller asks for a session with (never one of the actor's own)."""
MAX_SESSION_TTL: Final = 3600.0
DEFAULT_SESSION_TTL: Final = 600.0

_KEY_CACHE = 4096
_TICKET = re.compile(r"([0-9a-f]{32})\.([0-9]{1,13})")
_EXCHANGE_KEY = re.compile(r"[0-9a-f]{64}")


class SessionGrant(msgspec.Struct, frozen=True):
    """The body of a handshake's reply: the ticket, when it expires, and the session key
    sealed (libsodium ``crypto_box_seal``) to the caller's X25519 key, all in hex."""

    ticket: str
    expires: int
    """Milliseconds since the epoch."""
    sealed_key: str


class SessionSecret:
    """What every replica of an actor derives from its seed to grant and check sessions."""

    __slots__ = ("_keys", "_secret", "name")

    def __init__(self, key: Keypair, name: str) -> None:
        self.name = name
        self._secret = hmac.digest(key.seed, f"{PROTOCOL_VERSION}\nsessions".encode(), "sha256")
        self._keys: dict[tuple[str, str], bytes] = {}
        """Keys derived lately (a cache, not state: any replica can derive any of them)."""

    def session_key(self, caller: str, ticket: str) -> bytes:
        """The session key of ``caller``'s session ``ticket`` with this actor."""
        derived = self._keys.get((caller, ticket))
        if derived is None:
            label = f"{PROTOCOL_VERSION}\nsession\n{self.name}\n{caller}\n{ticket}"
            derived = hmac.digest(self._secret, label.encode(), "sha256")
            if len(self._keys) >= _KEY_CACHE:
                self._keys.clear()
            self._keys[caller, ticket] = derived
        return derived

    def grant(self, caller: str, exchange_key: str, ttl: float) -> SessionGrant:
        """A new session for ``caller``, its key sealed to the hex X25519 ``exchange_key``;
        raises :class:`BadRequest` for a malformed key or a ttl out of (0, 3600]."""
        if not _EXCHANGE_KEY.fullmatch(exchange_key):
            raise BadRequest("exchange_key must be an X25519 public key: 64 hex characters")
        if not 0 < ttl <= MAX_SESSION_TTL:  # also refuses nan
            raise BadRequest(f"ttl must be seconds in (0, {MAX_SESSION_TTL:g}]")
        expires = int(time.time() * 1000 + ttl * 1000)
        ticket = f"{secrets.token_hex(16)}.{expires}"
        box = nacl.public.SealedBox(nacl.public.PublicKey(bytes.fromhex(exchange_key)))
        sealed = box.encrypt(self.session_key(caller, ticket))
        return SessionGrant(ticket, expires, sealed.hex())

    def verify(
        self, subject: str, reply: str, headers: dict[str, str], body: bytes
    ) -> tuple[RequestMeta, bytes]:
        """Check a session call's ticket, expiry and MAC over its signing bytes (sent with
        the reply subject ``reply``); returns its
        meta and session key. Raises :class:`Unauthorized` (401) for a malformed, expired or
        forged one, :class:`BadRequest` for a bad timeout or content type after the MAC."""
        found: list[bytes] = []

        def proof(caller: str, signed: bytes, headers: dict[str, str]) -> None:
            ticket = _header(headers, H_SESSION, _TICKET)
            session_key = self.session_key(caller, ticket)
            if not hmac.compare_digest(mac(session_key, signed), _header(headers, H_MAC, _MAC)):
                raise Unauthorized("bad session MAC")
            # After the MAC: only the holder of the session learns that it has expired.
            if int(ticket.partition(".")[2]) <= time.time() * 1000:
                raise Unauthorized("session expired: open a new one")
            found.append(session_key)

        meta = verify_request(subject, reply, headers, body, proof)
        return meta, found[0]


def open_grant(grant: SessionGrant, exchange: nacl.public.PrivateKey) -> bytes:
    """The session key in a handshake's reply, unsealed with the caller's X25519 key;
    raises :class:`BadReply` if it does not open or is not 32 bytes."""
    try:
        session_key = nacl.public.SealedBox(exchange).decrypt(bytes.fromhex(grant.sealed_key))
    except (ValueError, nacl.exceptions.CryptoError):
        raise BadReply("the session key does not open with this handshake's key") from None
    if len(session_key) != 32 or not _TICKET.fullmatch(grant.ticket):
        raise BadReply("malformed session grant")
    return session_key


def session_seal(session_key: bytes, ticket: str) -> Seal:
    """A session call's ``Actor-Session`` and ``Actor-Mac``."""
    return lambda signed: {H_SESSION: ticket, H_MAC: mac(session_key, signed)}


def mac_request(
    session_key: bytes,
    caller: str,
    ticket: str,
    subject: str,
    reply: str,
    body: bytes,
    *,
    content_type: str = JSON,
    timeout: float | None = None,
    time_ms: int | None = None,
    nonce: str | None = None,
    on_behalf: str = "",
) -> dict[str, str]:
    """The headers of a session call by ``caller`` sent with the reply subject ``reply`` (a
    fresh time and nonce unless given)."""
    return request_headers(
        caller,
        subject,
        reply,
        body,
        session_seal(session_key, ticket),
        content_type=content_type,
        timeout=timeout,
        time_ms=time_ms,
        nonce=nonce,
        on_behalf=on_behalf,
    )
