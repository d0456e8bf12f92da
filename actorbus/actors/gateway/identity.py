"""Who a web call is made as: the ways an HTTP request becomes a signed NATS request.

1. **End to end**: the caller signed the request itself (``Actor-*`` headers, as in
   PROTOCOL.md); the gateway forwards headers and body untouched, so the actor verifies the
   caller and the gateway can neither forge nor alter the call.
2. **Bearer token** (``Authorization: Bearer abt_...``, or an OIDC login's JWT,
   :mod:`.oidc`): admins issue tokens through the
   policy actor, which keeps only their hash; the gateway signs as the key the token
   derives (:func:`~actorbus.bus.token_keypair`), so it holds no secret of its own for
   it, and a revoked token fails as soon as the policy change reaches the gateway.
3. **Commune body** (:mod:`.commune`) and 4. **bittensor hotkey** (``X-Bittensor-*``
   headers, :mod:`.btauth`): the caller's own signature is checked here, and never taken
   twice by any replica of this gateway (its signature, or the hotkey's nonce, noted in a
   JetStream bucket for ``2 * max_skew``, so neither another replica nor a restart takes
   it again); the gateway then calls *on behalf of* that address, which actors accept
   because the policy lists the gateway's key as a forwarder.
5. **Anonymous**: signed with a key of the caller's address (an IPv6 /64 counts as one),
   derived from the gateway's seed (``HMAC-SHA256(seed, "actorbus/2\nanonymous\n<address>")``,
   the same on every replica): role ``public``, with a quota, jobs and sessions of its own,
   so one web client neither spends another's quota nor sees its jobs.

Each request is also counted as one client for the gateway's fair share
(:mod:`.fairness`, :mod:`.shares`): a token's key; else the address it comes from
(anonymous and end-to-end calls alike: a key the gateway does not check is no identity
to count by), and, for a login's key, a commune address or a hotkey (keys cost nothing
to make), that key too.
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec

from ...bus import (
    Keypair,
    Unauthorized,
    Unavailable,
    token_id,
    token_keypair,
)
from ...bus.jetstream import Bucket
from ...bus.lru import LRU
from ...bus.requests import HeadersFor
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
    headers_for,
    relay_reply,
    request_nonce,
    signature_seal,
)
from ...host.policy import PolicyState
from .btauth import bittensor_signed, check_btauth
from .commune import commune_like, read_commune
from .oidc import OidcLogins, looks_like_jwt

__all__ = ["Identities", "Outgoing", "Received"]

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
    signer: Keypair | None = None
    """The key the gateway calls as (a token's, a login's, an address's anonymous key,
    or its own as a forwarder): the call may go in that key's session with the actor
    (``headers`` sign it: for a stream)."""
    content_type: str = JSON
    on_behalf: str = ""
    """The caller the gateway forwards for, when it signs as a forwarder."""


class Received(msgspec.Struct, frozen=True):
    """An HTTP request as it arrived: what a caller's own signature may cover."""

    method: str
    target: str
    """Its path and ``?query``, as sent."""
    headers: dict[str, str]
    """Lower-case names."""
    raw: bytes
    """Its body, as sent."""
    address: str
    """The client it comes from (an IPv6 /64 counts as one)."""


class Identities:
    """Turns HTTP requests into signed NATS requests (one per gateway replica)."""

    def __init__(
        self,
        name: str,
        key: Keypair,
        max_skew: float,
        seen: Bucket | None,
        oidc: OidcLogins | None = None,
    ) -> None:
        self.name = name
        """The gateway's name: end-to-end callers sign for its relay inboxes."""
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
        received: Received,
        body: bytes,
        signer: Keypair | None,
        timeout: float,
    ) -> Outgoing:
        """The NATS request for a call of ``name/fn`` made by the HTTP request ``received``
        with ``body`` (``received``'s own, or built from its query), signed as ``signer``
        (what :meth:`signer` gave). Raises :class:`Unauthorized` for a bad commune or
        bittensor signature, :class:`BadRequest` for a malformed commune body."""
        headers, subject = received.headers, call_subject(name, fn)
        # MessagePack when the request says so, else JSON (the gateway takes no other).
        msgpack = headers.get("content-type", "").startswith(MSGPACK)
        wire_type = MSGPACK if msgpack else JSON
        if signer is not None:
            seal = signature_seal(signer)
            signed = headers_for(
                signer.address, subject, body, seal, content_type=wire_type, timeout=timeout
            )
            mode, who = (
                ("token", signer.address)
                if headers.get("authorization")
                else ("anonymous", f"address:{received.address}")
            )
            return Outgoing(mode, body, signed, who, signer=signer, content_type=wire_type)
        if "actor-signature" in headers or "actor-key" in headers:
            forwarded = {h: headers[h.lower()] for h in _SIGNED if h.lower() in headers}
            if msgpack:
                forwarded[H_CONTENT_TYPE] = MSGPACK
            nonce = request_nonce(forwarded)
            if not nonce:
                raise Unauthorized(f"missing or malformed header {H_NONCE}")
            # The key is only claimed here (the actor checks it): counted as its address.
            who = f"address:{received.address}"
            reply = relay_reply(self.name, nonce)
            return Outgoing("end-to-end", body, lambda _: forwarded, who, reply)
        if bittensor_signed(headers):
            btauth = check_btauth(
                headers,
                received.method,
                received.target,
                received.raw,
                self.key.address,
                self.max_skew,
            )
            await self._once(btauth.mark, "bittensor nonce")
            return self._on_behalf("bittensor", subject, body, wire_type, timeout, btauth.hotkey)
        body, on_behalf, signature = read_commune(body, f"{name}/{fn}", self.max_skew)
        await self._once(signature, "commune signature")
        return self._on_behalf("commune", subject, body, JSON, timeout, on_behalf)

    def _on_behalf(
        self, mode: str, subject: str, body: bytes, wire_type: str, timeout: float, caller: str
    ) -> Outgoing:
        """A request the gateway signs as a forwarder, on behalf of ``caller`` (whose own
        signature it checked)."""
        seal = signature_seal(self.key)
        forwarded = headers_for(
            self.key.address,
            subject,
            body,
            seal,
            content_type=wire_type,
            timeout=timeout,
            on_behalf=caller,
        )
        return Outgoing(
            mode,
            body,
            forwarded,
            caller,
            signer=self.key,
            content_type=wire_type,
            on_behalf=caller,
        )

    async def signer(
        self, headers: dict[str, str], body: bytes, policy: PolicyState, address: str
    ) -> Keypair | None:
        """The key :meth:`outgoing` will sign a request from client ``address`` with as its
        caller (a token's or OIDC login's, or the address's anonymous key); ``None`` when
        the caller signs (end to end) or the gateway signs only as a forwarder (a commune
        body). Raises :class:`Unauthorized` for a bad or revoked token, and what
        :meth:`.OidcLogins.login` raises for a JWT."""
        if "actor-signature" in headers or "actor-key" in headers or bittensor_signed(headers):
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
        return None if commune_like(headers, body) else self.anonymous(address)

    def token_holder(self, authorization: str, policy: PolicyState) -> str:
        """The address of the key an ``Authorization`` value signs as, when it is a bearer
        token ``policy`` lists (not an OIDC login, whose keys anyone with an account at
        the issuer gets); else ``""``."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or looks_like_jwt(token):
            return ""
        try:
            return self._token_key(token, policy).address
        except Unauthorized:
            return ""

    def _token_key(self, token: str, policy: PolicyState) -> Keypair:
        digest = token_id(token)
        if digest not in policy.tokens:
            self._token_keys.pop(digest)
            raise Unauthorized("unknown or revoked token")
        key = self._token_keys.get(digest)
        if key is None:
            key = self._token_keys[digest] = token_keypair(token)
        return key

    async def _once(self, mark: bytes, what: str) -> None:
        """Take a commune signature, or a bittensor hotkey's nonce, once on all replicas
        (compare-and-set in the shared bucket, whose entries outlive any freshness window
        they were taken in)."""
        if self._seen is None:
            raise Unavailable(f"calls with a {what} need JetStream (to take each once)")
        key = hashlib.sha256(mark).hexdigest()
        if await self._seen.update(key, b"", 0) is None:
            raise Unauthorized(f"replayed {what}")
