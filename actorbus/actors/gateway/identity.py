"""Who a web call is made as: the ways an HTTP request becomes a signed NATS request.

1. **End to end**: the caller signed the request itself (``Actor-*`` headers, as in
   PROTOCOL.md); the gateway forwards headers and body untouched, so the actor verifies the
   caller and the gateway can neither forge nor alter the call.
2. **Bearer token** (``Authorization: Bearer abt_...``): admins issue tokens through the
   policy actor, which keeps only their hash; the gateway signs as the key the token
   derives (:func:`~actorbus.bus.token_keypair`), so it holds no secret of its own for
   it, and a revoked token fails as soon as the policy change reaches the gateway.
3. **Commune body** (``{"data", "signature", "address"}``, and optionally
   ``"crypto_type"``: ``"sr25519"``/``1`` or ``"ed25519"``/``0``; without it, either):
   the caller's signature over ``data`` (``{"target": "<actor>/<fn>", "args", "kwargs",
   "timestamp"}``), or over polkadot-js's ``<Bytes>`` wrap of it, is checked here: its
   target must be the route's (a body signed for one function calls no other), its
   timestamp within ``max_skew`` of now, and its signature never seen before by any
   replica of this gateway (noted in a JetStream bucket for ``2 * max_skew``, so neither
   another replica nor a restart takes it again); the gateway then calls *on behalf of*
   that address, which actors accept because the policy lists the gateway's key as a
   forwarder.
4. **Anonymous**: signed with a key of the caller's address (an IPv6 /64 counts as one),
   derived from the gateway's seed (``HMAC-SHA256(seed, "actorbus/2\nanonymous\n<address>")``,
   the same on every replica): role ``public``, with a quota, jobs and sessions of its own,
   so one web client neither spends another's quota nor sees its jobs.

Each request is also counted as one client for the gateway's fair share
(:mod:`.fairness`): a token's or login's key, a commune address, or else the address it comes
from (anonymous and end-to-end calls alike: a key the gateway does not check is no
identity to count by).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from typing import Any

import msgspec

from ...bus import (
    BadRequest,
    Keypair,
    Unauthorized,
    Unavailable,
    sign_request,
    token_id,
    token_keypair,
    verify,
)
from ...bus.connection import HeadersFor
from ...bus.jetstream import Bucket
from ...bus.keys import ED25519, SCHEMES, SR25519
from ...bus.lru import LRU
from ...bus.subjects import call_subject
from ...bus.wire import (
    H_CONTENT_TYPE,
    H_KEY,
    H_NONCE,
    H_ON_BEHALF,
    H_SCHEME,
    H_SIGNATURE,
    H_TIME,
    H_TIMEOUT,
    JSON,
    MSGPACK,
    check_nesting,
    relay_reply,
    request_headers,
    request_nonce,
    signature_seal,
)
from ...host.policy import PolicyState
from .oidc import OidcLogins, looks_like_jwt

__all__ = ["Identities", "Outgoing"]

_SIGNED = (H_KEY, H_TIME, H_NONCE, H_SIGNATURE, H_SCHEME, H_TIMEOUT, H_ON_BEHALF)
_KEY_CACHE = 4096


class Outgoing(msgspec.Struct):
    """The NATS request an HTTP request becomes, and how its caller was identified."""

    mode: str
    body: bytes
    headers: HeadersFor
    who: str
    """The client it counts as for the gateway's fair share."""
    reply: str = ""
    """Its reply subject, when the caller signed for one (end to end: a relay's)."""


class Identities:
    """Turns HTTP requests into signed NATS requests (one per gateway replica)."""

    def __init__(
        self,
        key: Keypair,
        max_skew: float,
        seen: Bucket | None,
        oidc: OidcLogins | None = None,
    ) -> None:
        self.key = key
        self.oidc = oidc
        """Where bearer JWTs are checked (``None``: refused)."""
        self.max_skew = max_skew
        self._seen = seen
        """Where commune signatures are noted (``None``: no JetStream, none is taken)."""
        self._token_keys: LRU[str, Keypair] = LRU(_KEY_CACHE)
        self._anonymous: LRU[str, Keypair] = LRU(_KEY_CACHE)

    def anonymous(self, address: str) -> Keypair:
        """The key anonymous calls from client ``address`` are signed with."""
        key = self._anonymous.get(address)
        if key is None:
            label = f"actorbus/2\nanonymous\n{address}".encode()
            seed = hmac.new(self.key.seed, label, hashlib.sha256).digest()
            key = self._anonymous[address] = Keypair(seed)
        return key

    async def outgoing(
        self,
        name: str,
        fn: str,
        headers: dict[str, str],
        body: bytes,
        policy: PolicyState,
        timeout: float,
        address: str,
    ) -> Outgoing:
        """The NATS request for a call of ``name/fn`` with HTTP ``headers`` (lower-case
        names) and ``body`` from client ``address``. Raises :class:`Unauthorized` for a
        bad token or commune signature, :class:`BadRequest` for a malformed commune body."""
        subject = call_subject(name, fn)
        # MessagePack when the request says so, else JSON (the gateway takes no other).
        msgpack = headers.get("content-type", "").startswith(MSGPACK)
        wire_type = MSGPACK if msgpack else JSON
        if "actor-signature" in headers or "actor-key" in headers:
            forwarded = {h: headers[h.lower()] for h in _SIGNED if h.lower() in headers}
            if msgpack:
                forwarded[H_CONTENT_TYPE] = MSGPACK
            nonce = request_nonce(forwarded)
            if not nonce:
                raise Unauthorized(f"missing or malformed header {H_NONCE}")
            # The key is only claimed here (the actor checks it): counted as its address.
            who = f"address:{address}"
            return Outgoing("end-to-end", body, lambda _: forwarded, who, relay_reply(nonce))
        if _commune_like(headers, body):
            body, on_behalf = await self._commune(body, f"{name}/{fn}")
            caller = self.key.address
            seal = signature_seal(self.key)

            def forwarded_for(reply: str) -> dict[str, str]:
                return request_headers(
                    caller,
                    subject,
                    reply,
                    body,
                    seal,
                    content_type=JSON,
                    timeout=timeout,
                    on_behalf=on_behalf,
                )

            return Outgoing("commune", body, forwarded_for, on_behalf)
        signer = await self.signer(headers, body, policy, address)
        assert signer is not None  # neither end to end nor commune

        def signed(reply: str) -> dict[str, str]:
            return sign_request(
                signer, subject, reply, body, content_type=wire_type, timeout=timeout
            )

        if headers.get("authorization"):
            return Outgoing("token", body, signed, signer.address)
        return Outgoing("anonymous", body, signed, f"address:{address}")

    async def signer(
        self, headers: dict[str, str], body: bytes, policy: PolicyState, address: str
    ) -> Keypair | None:
        """The key :meth:`outgoing` will sign a request from client ``address`` with as its
        caller (a token's or OIDC login's, or the address's anonymous key); ``None`` when
        the caller signs (end to end) or the gateway signs only as a forwarder (a commune
        body). Raises :class:`Unauthorized` for a bad or revoked token, and what
        :meth:`.OidcLogins.login` raises for a JWT."""
        if "actor-signature" in headers or "actor-key" in headers:
            return None
        authorization = headers.get("authorization", "")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthorized("Authorization must be 'Bearer <token>'")
            token = token.strip()
            if looks_like_jwt(token):
                if self.oidc is None:
                    raise Unauthorized("this gateway takes no OIDC tokens")
                return await self.oidc.login(token)
            return self._token_key(token, policy)
        return None if _commune_like(headers, body) else self.anonymous(address)

    def _token_key(self, token: str, policy: PolicyState) -> Keypair:
        digest = token_id(token)
        if digest not in policy.tokens:
            self._token_keys.pop(digest)
            raise Unauthorized("unknown or revoked token")
        key = self._token_keys.get(digest)
        if key is None:
            key = self._token_keys[digest] = token_keypair(token)
        return key

    async def _commune(self, raw: bytes, target: str) -> tuple[bytes, str]:
        """Check a commune body for ``target`` (``actor/fn``); returns our body and the
        address it was signed by."""
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
            raise BadRequest(
                "commune data must be an object with target, args, kwargs and timestamp"
            )
        _check_commune_signature(address, message.encode(), sig, envelope.get("crypto_type"))
        if decoded.get("target") != target:
            raise Unauthorized(f'commune data must name its target: "target": "{target}"')
        stamp = decoded.get("timestamp")
        if (
            not isinstance(stamp, int | float)
            or isinstance(stamp, bool)
            or not math.isfinite(stamp)  # NaN is never "too old"
            or abs(time.time() - stamp) > self.max_skew
        ):
            raise Unauthorized(f"commune timestamp must be within {self.max_skew:g}s of now")
        await self._once(sig)
        params = decoded.get("params")
        args: Any = decoded.get("args", params if isinstance(params, list) else [])
        kwargs: Any = decoded.get("kwargs", params if isinstance(params, dict) else {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise BadRequest("commune args must be a list and kwargs an object")
        return msgspec.json.encode({"args": args, "kwargs": kwargs}), address

    async def _once(self, signature: bytes) -> None:
        """Take a commune signature once on all replicas (compare-and-set in the shared
        bucket, whose entries outlive any freshness window they were taken in)."""
        if self._seen is None:
            raise Unavailable("commune calls need JetStream (to take each signature once)")
        key = hashlib.sha256(signature).hexdigest()
        if await self._seen.update(key, b"", 0) is None:
            raise Unauthorized("replayed commune signature")


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
    wrapped = b"<Bytes>" + signed + b"</Bytes>"
    for scheme in schemes:
        # An sr25519 check tries the wrap itself.
        for message in (signed,) if scheme == SR25519 else (signed, wrapped):
            try:
                return verify(address, message, signature, scheme)
            except Unauthorized as exc:
                failure = exc
    raise failure


def _commune_like(headers: dict[str, str], body: bytes) -> bool:
    """Whether a body is meant as a commune body (and checked as one)."""
    return (
        not headers.get("content-type", "").startswith(MSGPACK)
        and body[:1] == b"{"
        and b'"signature"' in body
        and b'"data"' in body
    )
