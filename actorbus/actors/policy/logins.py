"""OpenID Connect logins at the gateway: the issuers whose tokens it takes, the rules
mapping their claims to roles (admins change both), and the bindings of each login's key
to its role, which only a gateway (a trusted forwarder) makes, and only to a role one of
that issuer's rules maps to.

The configuration is policy, not gateway settings, so every gateway replica and node
agrees on it and each change is signed and audited like any other. The policy cannot
check a login itself (the key is derived from the gateway's secret seed, and the token
was checked there): a binding is as trustworthy as the forwarder that makes it, which may
already call on behalf of anyone. What the policy does hold it to: a binding never gives
a role no rule of its issuer names, never touches a key with a role of its own (a token's,
a user's) or an admin's, and ends with its token (at most a day).
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any

import msgspec

from ...bus import BadRequest, Forbidden, LogThrottle, NotFound
from ...host.policy import (
    PUBLIC,
    OidcIssuer,
    OidcLogin,
    OidcRule,
    check_issuer_url,
    issuer_id,
)
from .store import PolicyStore, check_address, encode

__all__ = ["Logins"]

log = logging.getLogger("actorbus.policy")
_refusals = LogThrottle(log)

_CLAIM = re.compile(r"[A-Za-z0-9_.:/#-]{1,128}")
_LONGEST = 512
"""Characters of an audience, claim value or subject."""
MAX_LOGIN = 86400.0
_PRUNED_PER_BIND = 4
"""Expired logins each binding deletes: the bucket holds the logins in force, not every
subject ever seen (each is kept in memory by every host)."""
"""Seconds a binding lasts at most, whatever its token's ``exp`` (a gateway renews it)."""


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _LONGEST:
        raise BadRequest(f"{what} must be text of 1 to {_LONGEST} characters")
    return value


def _claim(name: str) -> str:
    if not isinstance(name, str) or not _CLAIM.fullmatch(name):
        raise BadRequest(f"invalid claim name {name!r}: 1-128 of [A-Za-z0-9_.:/#-]")
    return name


class Logins(PolicyStore):
    """OIDC issuers and rules (admins), and logins' roles (gateways)."""

    async def add_oidc(
        self, issuer: str, audience: list[str] | str, jwks: str = ""
    ) -> dict[str, Any]:
        """Take tokens from ``issuer`` (its exact ``iss``) that name one of ``audience``
        in their ``aud``; their keys from ``jwks`` (else from the issuer's discovery
        document). An issuer already added keeps its rules."""
        check_issuer_url(issuer)
        if jwks:
            check_issuer_url(jwks, "the JWKS URL")
        audiences = [audience] if isinstance(audience, str) else list(audience)
        if not audiences:
            raise BadRequest("an issuer needs an audience (the client id its tokens name)")
        for aud in audiences:
            _text(aud, "an audience")
        current = self.state.issuer(issuer)
        config = OidcIssuer(issuer, audiences, jwks, current.rules if current else [])
        args = {"issuer": issuer, "audiences": audiences, "jwks": jwks}
        await self._change("add_oidc", "oidc." + issuer_id(issuer), encode(config), **args)
        return msgspec.to_builtins(config)  # type: ignore[no-any-return]

    async def rm_oidc(self, issuer: str) -> None:
        """Take no more tokens from ``issuer``; its logins lose their roles at once."""
        who = self._require_admin()
        if self.state.issuer(issuer) is None:
            raise NotFound(f"no OIDC issuer {issuer!r}")
        await self._write(
            "oidc." + issuer_id(issuer), None, who=who, what="rm_oidc", args={"issuer": issuer}
        )
        for address, login in list(self.state.logins.items()):
            if login.issuer == issuer:
                await self._write(
                    "login." + address,
                    None,
                    who=who,
                    what="rm_oidc",
                    args={"issuer": issuer, "key": address},
                )

    async def oidc(self) -> list[dict[str, Any]]:
        """Every OIDC issuer: audiences, JWKS URL, rules (first match wins)."""
        self._require_admin()
        issuers = sorted(self.state.issuers.values(), key=lambda i: i.issuer)
        return [msgspec.to_builtins(i) for i in issuers]

    async def oidc_map(self, issuer: str, claim: str, value: str, role: str) -> dict[str, Any]:
        """Give logins from ``issuer`` whose ``claim`` is ``value`` (a list claim: holds
        it) the role ``role``; a rule for that claim and value is replaced in place, a new
        one goes last (the first rule a login matches decides)."""
        current = self._issuer(issuer)
        _claim(claim)
        _text(value, "a claim value")
        await self._existing_role(role)
        rule = OidcRule(claim, value, role)
        rules = list(current.rules)
        same = [i for i, r in enumerate(rules) if (r.claim, r.value) == (claim, value)]
        if same:
            rules[same[0]] = rule
        else:
            rules.append(rule)
        args = {"claim": claim, "value": value, "role": role}
        return await self._store_rules(current, rules, "oidc_map", **args)

    async def oidc_unmap(self, issuer: str, claim: str, value: str) -> dict[str, Any]:
        """Remove the rule of ``issuer`` for ``claim`` = ``value``; logins holding its role
        lose it at once unless another rule of the issuer maps to that role."""
        current = self._issuer(issuer)
        rules = [r for r in current.rules if (r.claim, r.value) != (claim, value)]
        if len(rules) == len(current.rules):
            raise NotFound(f"issuer {issuer!r} has no rule {claim}={value}")
        return await self._store_rules(current, rules, "oidc_unmap", claim=claim, value=value)

    async def oidc_bind(
        self, key: str, issuer: str, subject: str, role: str, expires: float
    ) -> dict[str, Any]:
        """(Gateways only.) Let ``key``, the key a gateway signs with for the login
        ``subject`` of ``issuer``, have ``role`` until ``expires`` (Unix seconds, its
        token's ``exp``; at most a day from now). ``role`` must be one a rule of the issuer
        maps to; a key with a role of its own, or an admin's, is never bound."""
        caller = self._caller()
        if caller not in self.state.forwarders:
            # The way to trust it is for an admin's eyes: a stranger asking is told no more.
            _refusals.log(
                logging.WARNING,
                "oidc_bind",
                "oidc_bind refused to %s, not a trusted forwarder (if it is your gateway: "
                "`actor policy forwarder add %s`)",
                caller,
                caller,
            )
            raise Forbidden("only a trusted forwarder (a gateway) binds OIDC logins")
        check_address(key)
        _text(subject, "a subject")
        config = self.state.issuer(issuer)
        if config is None:
            raise NotFound(f"no OIDC issuer {issuer!r}")
        if role == PUBLIC or role not in config.role_names:
            raise Forbidden(f"no rule of issuer {issuer!r} maps a login to role {role!r}")
        if key in self.state.admins or key in self.state.users or key in self.state.revoked:
            raise Forbidden(f"{key} has a role of its own: a login cannot change it")
        now = time.time()
        if not (isinstance(expires, int | float) and math.isfinite(expires) and expires > now):
            raise BadRequest("expires must be a time in the future (Unix seconds)")
        login = OidcLogin(issuer, subject, role, min(float(expires), now + MAX_LOGIN))
        await self._write(
            "login." + key,
            encode(login),
            who=caller,
            what="oidc_bind",
            args={"key": key, **msgspec.to_builtins(login)},
        )
        expired = [a for a, held in self.state.logins.items() if held.expires <= now]
        for address in expired[:_PRUNED_PER_BIND]:
            await self._write(
                "login." + address, None, who=caller, what="oidc_expired", args={"key": address}
            )
        return msgspec.to_builtins(login)  # type: ignore[no-any-return]

    def _issuer(self, issuer: str) -> OidcIssuer:
        self._require_admin()
        current = self.state.issuer(issuer)
        if current is None:
            known = ", ".join(sorted(i.issuer for i in self.state.issuers.values())) or "none"
            raise NotFound(
                f"no OIDC issuer {issuer!r} (issuers: {known}; add one with "
                "`actor policy oidc add --issuer URL --audience AUD`)"
            )
        return current

    async def _store_rules(
        self, current: OidcIssuer, rules: list[OidcRule], what: str, **args: Any
    ) -> dict[str, Any]:
        config = msgspec.structs.replace(current, rules=rules)
        entry = "oidc." + issuer_id(current.issuer)
        await self._change(what, entry, encode(config), issuer=current.issuer, **args)
        return msgspec.to_builtins(config)  # type: ignore[no-any-return]
