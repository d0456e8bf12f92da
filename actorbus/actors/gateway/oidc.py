"""OpenID Connect logins: ``Authorization: Bearer <JWT>`` from an issuer the policy names
becomes a key the gateway signs with, and a role the policy knows that key by.

**The token** is checked here, in this order, and each refusal is a 401 saying why
(never echoing the token): at most 8 KiB; a JWS in compact form; its ``alg`` asymmetric
(``none`` and every ``HS*`` refused before anything else, so a public key can never
serve as an HMAC secret); its (not yet trusted) ``iss`` an issuer the policy names; the
key its ``kid`` names among the issuer's published keys (:mod:`.jwks`), of the type its
``alg`` needs (and the ``alg`` the key is published for, if any); the signature; then the
claims: ``iss`` exactly, ``aud`` naming one of the issuer's audiences, ``exp`` present
and not passed, ``nbf`` and ``iat`` not ahead, each with ``_LEEWAY`` seconds of clock
skew, and a ``sub``.

**The key** is derived from the gateway's seed, never from the token alone:
``HMAC-SHA256(seed, "actorbus/2\\noidc\\n<iss>\\n<sub>")`` (issuer URLs hold no line
breaks), so one login is one address on every replica and across restarts, and nobody
without the gateway's seed can sign as it.

**The role** is the first of the issuer's rules the claims match. A login no rule matches
is refused (403): an issuer's tokens often go to anyone with an account there, so
configuring an issuer is not letting everyone in; the rules say who (a rule may map to
``public``). The actors decide by the caller's role in the policy, so the gateway asks the
policy actor to bind the key to the role until the token's ``exp`` plus the leeway (as
long as the gateway takes the token; ``oidc_bind``, which only a trusted forwarder may)
whenever its own view of the policy lacks that binding or it is about to run out, and
calls only once its view shows it.
A mapping gives a role, never admin rights (admins are keys the policy lists), like a
bearer token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
from joserfc import jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import RSAKey

from ...bus import (
    ActorError,
    Forbidden,
    Keypair,
    LogThrottle,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from ...bus.lru import LRU
from ...bus.wire import check_nesting
from ...host.policy import PUBLIC, OidcIssuer, OidcLogin, PolicyState
from .fairness import Fairness
from .jwks import IssuerKeys, PublicKey

__all__ = ["MAX_TOKEN", "OidcLogins", "looks_like_jwt"]

log = logging.getLogger("actorbus.gateway")

MAX_TOKEN = 8192
"""Characters of a bearer JWT (real ID and access tokens are 1-2 KiB)."""
_LEEWAY = 30.0
"""Seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``."""
_RENEW = 60.0
"""Seconds before a binding runs out that a login with a later ``exp`` renews it."""
_BIND_WAIT = 5.0
"""Seconds a login waits for its binding to reach this replica's view of the policy."""
_BIND_RATE = 20.0
"""New bindings a second one gateway replica asks for, in bursts of twice that: each is a
policy write, and an issuer may hand tokens to anyone who makes an account there."""
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_KEYS_KEPT = 4096

# The key type (and curve) each accepted algorithm needs: asymmetric only.
_FITS: dict[str, tuple[str, frozenset[str] | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    "Ed25519": ("OKP", frozenset({"Ed25519"})),
}
_MIN_RSA_BITS = 2048

Bind = Callable[[str, str, str, str, float], Awaitable[Any]]
"""Asks the policy actor to bind (key, issuer, subject, role, expires); returns its answer."""


def looks_like_jwt(token: str) -> bool:
    """Whether a bearer value is shaped like a JWS (three base64url parts) and so goes to
    the OIDC path (an ``abt_`` token never is)."""
    return _JWT.fullmatch(token) is not None


def _part(text: str, what: str) -> dict[str, Any]:
    """A JWT's header or payload as a JSON object."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        check_nesting(raw)
        value = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, ActorError):
        raise Unauthorized(f"OIDC token's {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise Unauthorized(f"OIDC token's {what} is not a JSON object")
    return value


def _time(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unauthorized(f"OIDC token's {name} is not a time (Unix seconds)")
    return float(value)


class OidcLogins:
    """Turns OIDC bearer tokens into keys (one per gateway replica)."""

    def __init__(
        self,
        gateway: Keypair,
        keys: IssuerKeys,
        policy: Callable[[], PolicyState],
        learn: Callable[[str], Awaitable[None]],
        bind: Bind,
    ) -> None:
        self._seed = gateway.seed
        self._address = gateway.address
        self._refusals = LogThrottle(log)
        self.keys = keys
        self._policy = policy
        self._learn = learn
        self._bind = bind
        self._derived: LRU[tuple[str, str], Keypair] = LRU(_KEYS_KEPT)
        self._pending: dict[str, anyio.Event] = {}
        """Keys whose binding a request of this replica is asking for."""
        self._allowance = Fairness(1, _BIND_RATE)
        """The bindings it may ask for: one share, of its rate only."""

    def key_of(self, issuer: str, subject: str) -> Keypair:
        """The key the login ``subject`` of ``issuer`` is signed as."""
        key = self._derived.get((issuer, subject))
        if key is None:
            label = f"actorbus/2\noidc\n{issuer}\n{subject}".encode()
            seed = hmac.new(self._seed, label, hashlib.sha256).digest()
            key = self._derived[(issuer, subject)] = Keypair(seed)
        return key

    async def login(self, token: str) -> Keypair:
        """The key to sign as for the bearer JWT ``token``, once its key has its role in
        this replica's view of the policy. Raises :class:`Unauthorized` (with the reason)
        for a token that does not hold, :class:`Forbidden` for a login no rule of its
        issuer maps to a role, :class:`Unavailable` if the issuer's keys cannot be fetched
        or the policy cannot bind the login."""
        issuer, claims = await self.verify(token)
        role = issuer.role_for(claims)
        if role is None:
            raise Forbidden(
                f"no rule of this bus's policy gives logins of {issuer.issuer} like yours a "
                "role (an admin maps one: actor policy oidc map --issuer URL --claim "
                "NAME=VALUE --role ROLE)"
            )
        subject: str = claims["sub"]
        key = self.key_of(issuer.issuer, subject)
        if role != PUBLIC:
            # Bound while this gateway takes the token: its exp, plus the leeway.
            until = float(claims["exp"]) + _LEEWAY
            await self._bound(key.address, issuer.issuer, subject, role, until)
        return key

    async def verify(self, token: str) -> tuple[OidcIssuer, dict[str, Any]]:
        """The issuer and claims of ``token`` if it holds (see the module's docstring);
        raises :class:`Unauthorized` saying why not."""
        if len(token) > MAX_TOKEN:
            raise Unauthorized(f"OIDC token over {MAX_TOKEN} characters")
        if not looks_like_jwt(token):
            raise Unauthorized("OIDC token is not a JWT (header.payload.signature)")
        head, body, _ = token.split(".")
        header = _part(head, "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in _FITS:
            shown = alg[:16] if isinstance(alg, str) else alg
            raise Unauthorized(
                f"OIDC token's alg {shown!r} is not accepted (unsupported alg): only "
                f"asymmetric signatures ({', '.join(sorted(_FITS))})"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("OIDC token's kid is not text")
        unverified = _part(body, "payload")
        issuer = self._issuer(unverified.get("iss"))
        key = await self.keys.key(issuer, kid)
        _check_fit(key, alg)
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
        except BadSignatureError:
            raise Unauthorized("OIDC token's signature does not verify (bad signature)") from None
        except JoseError as exc:
            raise Unauthorized(f"OIDC token refused: {exc.error}") from None
        self._check_claims(issuer, claims)
        return issuer, claims

    def _issuer(self, iss: object) -> OidcIssuer:
        if not isinstance(iss, str):
            raise Unauthorized("OIDC token names no issuer (iss)")
        issuer = self._policy().issuer(iss)
        if issuer is None:
            raise Unauthorized(
                f"OIDC token's issuer {iss[:128]!r} is not one this bus takes (unknown issuer)"
            )
        return issuer

    def _check_claims(self, issuer: OidcIssuer, claims: dict[str, Any]) -> None:
        if claims.get("iss") != issuer.issuer:  # signed: the same as read before
            raise Unauthorized("OIDC token's issuer is not the one its key is for")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if not any(isinstance(a, str) and a in issuer.audiences for a in audiences):
            raise Unauthorized("OIDC token is not for this bus (wrong audience)")
        now = time.time()
        expires = _time(claims, "exp")
        if expires is None:
            raise Unauthorized("OIDC token has no expiry (exp)")
        if expires <= now - _LEEWAY:
            raise Unauthorized("OIDC token expired")
        not_before = _time(claims, "nbf")
        if not_before is not None and not_before > now + _LEEWAY:
            raise Unauthorized("OIDC token is not valid yet (nbf)")
        issued = _time(claims, "iat")
        if issued is not None and issued > now + _LEEWAY:
            raise Unauthorized("OIDC token was issued in the future (iat)")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise Unauthorized("OIDC token names no subject (sub)")

    def _holds(self, address: str, issuer: str, role: str, expires: float) -> bool:
        """Whether this replica's policy gives ``address`` ``role`` for long enough (or a
        role of its own, which a login does not change)."""
        policy = self._policy()
        if address in policy.users:
            return True
        login = policy.logins.get(address)
        if login is None or login.issuer != issuer or policy.login_role(login) != role:
            return False
        return login.expires - time.time() > _RENEW or login.expires >= expires

    async def _bound(
        self, address: str, issuer: str, subject: str, role: str, expires: float
    ) -> None:
        """Make sure ``address`` has ``role`` in this replica's view of the policy: ask the
        policy actor to bind it (one request of this replica asks at a time), then wait
        until the binding arrives (at most ``_BIND_WAIT`` seconds)."""
        await self._learn(address)  # the replica holds its records, and their changes
        while not self._holds(address, issuer, role, expires):
            pending = self._pending.get(address)
            if pending is None:
                break
            with anyio.move_on_after(_BIND_WAIT):
                await pending.wait()
            if not pending.is_set():
                raise Unavailable("this login's role is still being bound: try again")
        else:
            return
        self._spend_allowance()
        done = self._pending[address] = anyio.Event()
        try:
            try:
                answer = await self._bind(address, issuer, subject, role, expires)
                bound = msgspec.convert(answer, OidcLogin)
            except ActorError as exc:
                if isinstance(exc, Forbidden):  # said here, to the gateway's operator
                    self._refusals.log(
                        logging.WARNING,
                        "bind",
                        "OIDC logins cannot be bound: %s (an admin runs `actor policy "
                        "forwarder add %s`)",
                        exc.message,
                        self._address,
                    )
                raise Unavailable(f"this gateway cannot bind OIDC logins: {exc.message}") from None
            except msgspec.ValidationError:
                raise Unavailable("the policy actor answered the binding oddly") from None
            with anyio.move_on_after(_BIND_WAIT):
                # The view is a state the policy watch swaps and changes, with no event to
                # wait on: looked at every 10 ms, a few times per login an hour.
                while self._policy().logins.get(address) != bound:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            if self._policy().logins.get(address) != bound:
                raise Unavailable("this login's role has not reached the gateway yet: try again")
        finally:
            del self._pending[address]
            done.set()

    def _spend_allowance(self) -> None:
        """Count one binding against the replica's rate; raises :class:`Unavailable` (503,
        ``Retry-After``) beyond it: the gateway is busy, the login is not at fault."""
        try:
            self._allowance.check("bindings")
        except RateLimited:
            raise Unavailable(
                "too many new OIDC logins at this gateway at once: try again"
            ) from None
        self._allowance.spend("bindings")


def _check_fit(key: PublicKey, alg: str) -> None:
    """Refuse a key whose type (or curve, or the ``alg`` it is published for) is not the
    one ``alg`` needs, and RSA keys under 2048 bits."""
    kind, curves = _FITS[alg]
    published = key.get("alg")
    if key.key_type != kind or (curves is not None and key.get("crv") not in curves):
        raise Unauthorized(f"OIDC token's alg {alg} does not fit its key's type {key.key_type}")
    if published is not None and published != alg:
        raise Unauthorized(f"OIDC token's alg {alg} is not the one its key is for ({published})")
    if isinstance(key, RSAKey) and key.raw_value.key_size < _MIN_RSA_BITS:
        raise Unauthorized(f"OIDC token's key is an RSA key under {_MIN_RSA_BITS} bits")
