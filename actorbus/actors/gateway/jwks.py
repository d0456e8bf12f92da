"""The signing keys of each OIDC issuer the policy names, as one gateway replica holds
them: fetched from the issuer's JWKS (its URL from the policy, else from the issuer's
discovery document), kept ``oidc_jwks_ttl`` seconds, and fetched early when a token names
a key id (``kid``) not among them, which is how a rotated-in key is picked up without a
restart and a removed one stops verifying.

Every fetch of an issuer, early or due, is at least ``oidc_refetch`` seconds after the one
before and runs alone (others wait for it): tokens carrying made-up key ids cost the
issuer one fetch per interval, not one per token. A failed fetch keeps the keys held
(logged, throttled); with none held, logins from that issuer are 503 until one succeeds.
Fetches are bounded in time and size and follow no redirects, and only asymmetric public
keys meant for signatures are kept (an ``oct`` key never is, so no token's signature is
ever checked with a shared secret).
"""

from __future__ import annotations

import logging
import time

import anyio
import httpx
import msgspec
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey

from ...bus import BadRequest, LogThrottle, Unauthorized, Unavailable
from ...bus.lru import LRU
from ...host.policy import OidcIssuer, check_issuer_url, on_loopback

__all__ = ["IssuerKeys", "PublicKey", "fetch_json"]

log = logging.getLogger("actorbus.gateway")

PublicKey = RSAKey | ECKey | OKPKey
_KEY_TYPES = ("RSA", "EC", "OKP")
_MAX_DOCUMENT = 256 * 1024
"""Bytes of a discovery document or JWKS (real ones are a few KiB)."""
_FETCH_TIMEOUT = 5.0
_ISSUERS_KEPT = 256


async def fetch_json(url: str) -> dict[str, object]:
    """The JSON object at ``url`` (a GET; 200 only, no redirect, at most 256 KiB within
    5 s). Raises :class:`Unavailable` saying why not."""
    try:
        with anyio.fail_after(_FETCH_TIMEOUT):
            async with (
                httpx.AsyncClient(timeout=_FETCH_TIMEOUT, trust_env=False) as http,
                http.stream("GET", url, headers={"Accept": "application/json"}) as response,
            ):
                if response.status_code != 200:
                    raise Unavailable(f"{url} answered {response.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > _MAX_DOCUMENT:
                        raise Unavailable(f"{url} sent over {_MAX_DOCUMENT} bytes")
                    chunks.append(chunk)
    except TimeoutError:
        raise Unavailable(f"{url} did not answer within {_FETCH_TIMEOUT:g}s") from None
    except httpx.HTTPError as exc:
        raise Unavailable(f"{url} could not be fetched: {type(exc).__name__}") from None
    try:
        document = msgspec.json.decode(b"".join(chunks))
    except msgspec.DecodeError:
        raise Unavailable(f"{url} sent no JSON") from None
    if not isinstance(document, dict):
        raise Unavailable(f"{url} sent no JSON object")
    return document


class _Held:
    """One issuer's keys, and when they were (tried to be) fetched."""

    def __init__(self) -> None:
        self.keys: dict[str, PublicKey] | None = None
        """By ``kid`` (``""`` for a key without one); ``None`` until a fetch succeeds."""
        self.fetched = 0.0
        self.tried = -float("inf")
        self.lock = anyio.Lock()

    def find(self, kid: str | None) -> PublicKey | None:
        if self.keys is None:
            return None
        if kid is None:  # a token naming no key: only an issuer with one key is clear
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)


class IssuerKeys:
    """The keys of the issuers one gateway replica has seen tokens of."""

    def __init__(self, ttl: float, refetch: float) -> None:
        self.ttl = ttl
        self.refetch = refetch
        self.fetches = 0
        """Fetches of a JWKS so far (each attempt)."""
        self._held: LRU[tuple[str, str], _Held] = LRU(_ISSUERS_KEPT)
        self._throttle = LogThrottle(log)

    async def key(self, issuer: OidcIssuer, kid: str | None) -> PublicKey:
        """The key ``kid`` of ``issuer`` (fetching its keys if they are old, or do not hold
        it and may be fetched again). Raises :class:`Unauthorized` if the issuer has no
        such key, :class:`Unavailable` if its keys could never be fetched."""
        held = self._held.get((issuer.issuer, issuer.jwks))
        if held is None:
            held = self._held[(issuer.issuer, issuer.jwks)] = _Held()
        if held.keys is None or time.monotonic() - held.fetched >= self.ttl:
            await self._fetch(held, issuer)
        key = held.find(kid)
        if key is None and held.keys is not None:
            await self._fetch(held, issuer)  # a key rotated in since? (rate-limited)
            key = held.find(kid)
        if held.keys is None:  # what failed is in the gateway's log, not for the caller
            raise Unavailable(
                f"the signing keys of OIDC issuer {issuer.issuer} cannot be fetched now: "
                "try again later"
            )
        if key is None:
            named = f"the key {kid[:64]!r}" if kid is not None else "no key (kid)"
            raise Unauthorized(
                f"OIDC token names {named}, which its issuer does not publish (unknown kid)"
            )
        return key

    async def _fetch(self, held: _Held, issuer: OidcIssuer) -> None:
        """Fetch ``issuer``'s keys into ``held``, unless a fetch was tried less than
        ``refetch`` seconds ago (another request's, maybe the one just waited for)."""
        async with held.lock:
            if time.monotonic() - held.tried < self.refetch:
                return
            held.tried = time.monotonic()
            self.fetches += 1
            try:
                held.keys = await self._load(issuer)
            except Unavailable as exc:
                self._throttle.log(
                    logging.WARNING,
                    issuer.issuer,
                    "OIDC issuer %s: keys not fetched (%s)%s",
                    issuer.issuer,
                    exc.message,
                    "; keeping the keys held" if held.keys is not None else "",
                )
                return
            held.fetched = held.tried

    async def _load(self, issuer: OidcIssuer) -> dict[str, PublicKey]:
        url = issuer.jwks or await _discover(issuer.issuer)
        document = await fetch_json(url)
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise Unavailable(f"{url} is no JWKS (no list of keys)")
        keys: dict[str, PublicKey] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("kty") not in _KEY_TYPES:
                continue  # oct (shared secrets) and unknown types are never used
            if entry.get("use", "sig") != "sig" or "d" in entry:
                continue  # for encryption, or a private key published by mistake
            try:
                key = JWKRegistry.import_key(entry)
            except (JoseError, ValueError, TypeError):
                continue
            if isinstance(key, RSAKey | ECKey | OKPKey):
                keys.setdefault(str(entry.get("kid", "")), key)
        return keys


async def _discover(issuer: str) -> str:
    """The JWKS URL of ``issuer``'s discovery document (which must name ``issuer``
    exactly, as OpenID Connect Discovery requires)."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    document = await fetch_json(url)
    if document.get("issuer") != issuer:
        raise Unavailable(f"{url} names another issuer")
    jwks = document.get("jwks_uri")
    if not isinstance(jwks, str):
        raise Unavailable(f"{url} names no jwks_uri")
    try:
        check_issuer_url(jwks, "its jwks_uri")
    except BadRequest as exc:
        raise Unavailable(exc.message) from None
    if on_loopback(jwks) and not on_loopback(issuer):
        # An issuer's document must not point the gateway at the gateway's own machine.
        raise Unavailable(f"{url} names a jwks_uri on loopback for an issuer that is not")
    return jwks
