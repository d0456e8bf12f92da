"""The policy's model and its decision, as every host makes it (from its copy of the
policy, :mod:`.policy_view`).

Keys in the bucket: ``admin.<address>``, ``user.<address>`` (role name), ``role.<name>``
(:class:`Role`), ``stake.<address>`` (a number), ``config`` (:class:`PolicyConfig`),
``token.<sha256 of a bearer token>`` (:class:`TokenInfo`), ``forwarder.<address>``,
``host.<address>`` (keys that may let replicas serve, :mod:`actorbus.bus.tickets`) and
``name.<actor name>`` (the addresses that may serve that name), ``oidc.<issuer id>``
(:class:`OidcIssuer`: an OpenID Connect issuer the gateway takes logins from, and the
rules mapping its claims to roles) and ``login.<address>`` (:class:`OidcLogin`: the role
a gateway bound an OIDC login's key to, until its token expires); each a record signed by
the policy actor (:mod:`actorbus.bus.records`).

Quotas: a key may make ``max(stake / role.stake2rate, config.floor)`` calls per minute,
admins are unlimited (spent through leases, :mod:`.quotas`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
import time
import urllib.parse

import msgspec

from ..bus.errors import BadRequest
from ..bus.rights import GATEWAY, JOBS
from ..bus.settings import loopback_host
from ..bus.wire import UNDECODABLE

__all__ = [
    "DEFAULT_WHITELIST",
    "PER_KEY",
    "PUBLIC",
    "Decision",
    "HostGrant",
    "OidcIssuer",
    "OidcLogin",
    "OidcRule",
    "PolicyConfig",
    "PolicyState",
    "Role",
    "TokenInfo",
    "check_issuer_url",
    "issuer_id",
    "on_loopback",
]

log = logging.getLogger("actorbus.policy")

DEFAULT_WHITELIST = frozenset({"info", "schema", "fns", "whitelist", "blacklist", "is_admin"})
"""What every caller may call on every actor: enough to discover it."""

PUBLIC = "public"
_MEMO_LIMIT = 65536
_ONE_KEY = frozenset({"user", "stake", "revoked"})
"""Record kinds that change the decisions of the key they name only."""
PER_KEY = frozenset({"user", "stake", "login"})
"""Record kinds of which there is one per key that has one: a host that holds the records
of the keys calling it only reads these per key (:mod:`.policy_view`)."""


class Role(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a role may call (``actor/fn`` patterns, ``*`` wildcards) and how fast."""

    allow: list[str] = msgspec.field(default_factory=list)
    deny: list[str] = msgspec.field(default_factory=list)
    stake2rate: float = 1.0


class PolicyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    window: float = 60.0
    """Seconds per quota window."""
    floor: float = 60.0
    """Calls per minute every key gets at least (the rate of a key with no stake)."""
    local_exempt: bool = False
    """Whether keys of this NATS's own actors skip quotas."""


class Decision(msgspec.Struct, frozen=True):
    """The policy's answer for one (caller, actor, function), with the reason."""

    allowed: bool
    role: str
    reason: str
    rate: float | None = None
    """Calls per minute, or ``None`` for unlimited."""


class TokenInfo(msgspec.Struct, frozen=True):
    """A bearer token as the policy keeps it (under the hash of its text): its name and the
    address of the key it signs as (see :func:`actorbus.bus.token_keypair`)."""

    name: str
    address: str
    created: float


class OidcRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Logins whose claim ``claim`` is ``value`` (or, a list, holds it) have ``role``."""

    claim: str
    value: str
    role: str

    def matches(self, claims: dict[str, object]) -> bool:
        found = claims.get(self.claim)
        if isinstance(found, list):
            return any(_claim_text(item) == self.value for item in found)
        return _claim_text(found) == self.value


def _claim_text(value: object) -> str | None:
    """A claim's value as a rule compares it (strings as they are, booleans and integers as
    JSON writes them); ``None`` for anything else (objects, floats, null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    return None


class OidcIssuer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An OpenID Connect issuer whose tokens the gateway takes (stored under
    ``oidc.<issuer_id(issuer)>``): its exact ``iss``, the audiences a token must name one
    of, its JWKS URL (empty: from its discovery document) and the claim rules, first match
    wins."""

    issuer: str
    audiences: list[str]
    jwks: str = ""
    rules: list[OidcRule] = msgspec.field(default_factory=list)

    @property
    def role_names(self) -> set[str]:
        """The roles its rules map to."""
        return {rule.role for rule in self.rules}

    def role_for(self, claims: dict[str, object]) -> str | None:
        """The role of the first rule ``claims`` match, ``None`` if none does."""
        return next((rule.role for rule in self.rules if rule.matches(claims)), None)


class OidcLogin(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The role a gateway bound an OIDC login's key to (``login.<address>``), good until
    ``expires`` (Unix seconds: its token's ``exp``) while its issuer still maps a rule to
    that role."""

    issuer: str
    subject: str
    role: str
    expires: float


_LONGEST_URL = 512


def check_issuer_url(url: str, what: str = "issuer") -> str:
    """``url`` if it may name an OIDC issuer (or its JWKS): https, or http on a loopback
    host (tests, development); no query, fragment, credentials or whitespace. Raises
    :class:`BadRequest`."""
    if not isinstance(url, str) or not url or len(url) > _LONGEST_URL:
        raise BadRequest(f"{what} must be a URL of at most {_LONGEST_URL} characters")
    try:
        parts = urllib.parse.urlsplit(url)
        host, _port = parts.hostname or "", parts.port
    except ValueError:  # an unbalanced [ of an IPv6 host, a port that is no number...
        raise BadRequest(f"{what} {url!r} is no URL") from None
    if (
        not host
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or any(c.isspace() or not c.isprintable() for c in url)
    ):
        raise BadRequest(f"{what} {url!r} must be https://host[/path], no query or fragment")
    if parts.scheme == "https" or (parts.scheme == "http" and loopback_host(host)):
        return url
    raise BadRequest(
        f"{what} {url!r} must be https (http only on a loopback host: 127.0.0.1, ::1, localhost)"
    )


def on_loopback(url: str) -> bool:
    """Whether ``url`` (one :func:`check_issuer_url` let through) names a loopback host."""
    return loopback_host(urllib.parse.urlsplit(url).hostname or "")


def issuer_id(issuer: str) -> str:
    """The policy key part naming ``issuer`` (a URL holds characters a key may not)."""
    return hashlib.sha256(issuer.encode()).hexdigest()[:32]


_role_decoder = msgspec.json.Decoder(Role)
_config_decoder = msgspec.json.Decoder(PolicyConfig)
_token_decoder = msgspec.json.Decoder(TokenInfo)
_number_decoder = msgspec.json.Decoder(float)
_text_decoder = msgspec.json.Decoder(str)
_addresses_decoder = msgspec.json.Decoder(list[str])
_issuer_decoder = msgspec.json.Decoder(OidcIssuer)
_login_decoder = msgspec.json.Decoder(OidcLogin)


def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


class HostGrant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a listed host may run besides plain actors and its own node's supervisor: the
    names of the jobs actors and gateways an admin let it serve. Their work takes streams
    (the policy actor makes them: three per jobs name, one reserving a GiB) and rights no
    plain actor holds (a jobs actor pulls from its queue), so a host does not pick them
    for itself. A ``host.`` record of any other JSON value is a plain host."""

    jobs: list[str] = []
    gateway: list[str] = []

    def allows(self, role: str, name: str) -> bool:
        """Whether this host may run ``name`` as ``role`` (``jobs`` or ``gateway``)."""
        return name in (self.jobs if role == JOBS else self.gateway if role == GATEWAY else ())


_PLAIN_HOST = HostGrant()
_host_decoder = msgspec.json.Decoder(HostGrant | int | str | bool)


class PolicyState:
    """The policy as a host knows it; :meth:`apply` takes one KV change."""

    def __init__(self) -> None:
        self.admins: set[str] = set()
        self.users: dict[str, str] = {}
        self.roles: dict[str, Role] = {}
        self.stakes: dict[str, float] = {}
        self.tokens: dict[str, TokenInfo] = {}
        """Bearer tokens by the hex SHA-256 of their text."""
        self.forwarders: set[str] = set()
        """Keys trusted to call on behalf of others (a gateway's)."""
        self.hosts: dict[str, HostGrant] = {}
        """Keys that may let replicas serve a name (besides admins), and the jobs actors
        and gateways each may run."""
        self.revoked: set[str] = set()
        """Keys of revoked tokens: they may call nothing, and their jobs stop."""
        self.names: dict[str, list[str]] = {}
        """Per actor name, the addresses that may serve it."""
        self.issuers: dict[str, OidcIssuer] = {}
        """OIDC issuers by :func:`issuer_id`."""
        self.logins: dict[str, OidcLogin] = {}
        """OIDC logins' keys by address: the role a gateway bound each to, and until when."""
        self.config = PolicyConfig()
        self.configured = False
        self.revision = 0
        self._patterns: dict[str, re.Pattern[str]] = {}
        self._memo: dict[str, dict[tuple[str, str, bool], Decision]] = {}
        """Per caller key, its decisions lately (a change to one key's role, stake,
        revocation or login drops that key's; any other change, all)."""
        self._memo_size = 0

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply the KV entry ``key`` (``None``: deleted). Malformed values are skipped."""
        kind, _, subject = key.partition(".")
        try:
            if kind == "admin":
                if value is None:
                    self.admins.discard(subject)
                else:
                    self.admins.add(subject)
            elif kind == "user":
                if value is None:
                    self.users.pop(subject, None)
                else:
                    self.users[subject] = _text_decoder.decode(value)
            elif kind == "role":
                if value is None:
                    self.roles.pop(subject, None)
                else:
                    self.roles[subject] = _role_decoder.decode(value)
            elif kind == "stake":
                if value is None:
                    self.stakes.pop(subject, None)
                else:
                    self.stakes[subject] = _number_decoder.decode(value)
            elif kind == "token":
                if value is None:
                    self.tokens.pop(subject, None)
                else:
                    self.tokens[subject] = _token_decoder.decode(value)
            elif kind == "forwarder":
                if value is None:
                    self.forwarders.discard(subject)
                else:
                    self.forwarders.add(subject)
            elif kind == "host":
                if value is None:
                    self.hosts.pop(subject, None)
                else:
                    grant = _host_decoder.decode(value)
                    self.hosts[subject] = grant if isinstance(grant, HostGrant) else _PLAIN_HOST
            elif kind == "revoked":
                if value is None:
                    self.revoked.discard(subject)
                else:
                    self.revoked.add(subject)
            elif kind == "name":
                if value is None:
                    self.names.pop(subject, None)
                else:
                    self.names[subject] = _addresses_decoder.decode(value)
            elif kind == "oidc":
                if value is None:
                    self.issuers.pop(subject, None)
                else:
                    self.issuers[subject] = _issuer_decoder.decode(value)
            elif kind == "login":
                if value is None:
                    self.logins.pop(subject, None)
                else:
                    self.logins[subject] = _login_decoder.decode(value)
                # One key's role: forget that key's decisions, keep the revision (a new one
                # has every replica give back every key's quota lease; this key's ends with
                # its window, at most a minute).
                self._memo_size -= len(self._memo.pop(subject, {}))
                return
            elif key == "config":
                self.config = PolicyConfig() if value is None else _config_decoder.decode(value)
                self.configured = value is not None
            else:
                return
        except UNDECODABLE as exc:
            log.warning("policy: ignoring malformed entry %s: %s", key, exc)
            return
        self.revision += 1
        if kind in _ONE_KEY:  # one key's role, stake or revocation: that key's decisions
            self._memo_size -= len(self._memo.pop(subject, {}))
            return
        self._memo.clear()
        self._memo_size = 0

    def forget(self, key: str) -> None:
        """Drop what is known of ``key``'s own records (its role, stake and login), and its
        decisions: a host that holds the records of the keys that call it only
        (:mod:`.policy_view`) lets go of a key it has not seen lately."""
        self.users.pop(key, None)
        self.stakes.pop(key, None)
        self.logins.pop(key, None)
        self._memo_size -= len(self._memo.pop(key, {}))

    def role_of(self, key: str) -> str:
        """``key``'s role: its own (``user.``), else an OIDC login's while it holds
        (:meth:`login_role`), else ``public``."""
        role = self.users.get(key)
        if role is not None:
            return role
        login = self.logins.get(key)
        return PUBLIC if login is None else self.login_role(login) or PUBLIC

    def issuer(self, url: str) -> OidcIssuer | None:
        """The configured OIDC issuer whose ``iss`` is exactly ``url``."""
        found = self.issuers.get(issuer_id(url))
        return found if found is not None and found.issuer == url else None

    def login_role(self, login: OidcLogin, now: float | None = None) -> str | None:
        """The role ``login`` gives, or ``None`` once it has expired, or its issuer is gone
        or no longer maps any rule to that role (unmapping a role ends its logins at once,
        without waiting for their tokens to expire)."""
        if login.expires <= (time.time() if now is None else now):
            return None
        issuer = self.issuer(login.issuer)
        if issuer is None or login.role not in issuer.role_names:
            return None
        return login.role

    def rate_of(self, key: str, *, forwarded: bool = False) -> float | None:
        """Calls per minute ``key`` may make, ``None`` if unlimited (admins, unless the call
        was forwarded on their behalf)."""
        if key in self.admins and not forwarded:
            return None
        role = self.roles.get(self.role_of(key)) or Role()
        stake = self.stakes.get(key, 0.0)
        return max(stake / role.stake2rate if role.stake2rate > 0 else 0.0, self.config.floor)

    def _matches(self, patterns: list[str], target: str) -> str | None:
        for pattern in patterns:
            compiled = self._patterns.get(pattern)
            if compiled is None:
                compiled = self._patterns[pattern] = _pattern(pattern)
            if compiled.match(target):
                return pattern
        return None

    def decide(
        self,
        key: str,
        actor: str,
        fn: str,
        allow: frozenset[str] = frozenset(),
        deny: frozenset[str] = frozenset(),
        *,
        forwarded: bool = False,
    ) -> Decision:
        """May ``key`` call ``actor/fn``? ``allow``/``deny`` are the actor class's own widening
        and narrowing of the whitelist. Admins may call anything (but a call a forwarder
        makes on an admin's behalf is decided by the admin's role, like anyone's); then deny
        wins: the actor's ``deny``, the role's deny patterns; then the whitelist, the actor's
        ``allow`` and the role's allow patterns; anything else is refused."""
        if key in self.logins:  # a login's role ends with time, not with a change: no memo
            return self._decide(key, actor, fn, allow, deny, forwarded)
        mine = self._memo.get(key)
        decision = None if mine is None else mine.get((actor, fn, forwarded))
        if decision is not None:
            return decision
        decision = self._decide(key, actor, fn, allow, deny, forwarded)
        if self._memo_size >= _MEMO_LIMIT:
            self._memo.clear()
            self._memo_size = 0
        self._memo.setdefault(key, {})[actor, fn, forwarded] = decision
        self._memo_size += 1
        return decision

    def _decide(
        self,
        key: str,
        actor: str,
        fn: str,
        allow: frozenset[str],
        deny: frozenset[str],
        forwarded: bool,
    ) -> Decision:
        if key in self.revoked:
            return Decision(False, PUBLIC, "this key's token was revoked: it may call nothing")
        if key in self.admins and not forwarded:
            return Decision(True, "admin", "admins may call everything")
        role_name = self.role_of(key)
        role = self.roles.get(role_name) or Role()
        rate = self.rate_of(key, forwarded=forwarded)
        target = f"{actor}/{fn}"
        if fn in deny:
            return Decision(False, role_name, f"{target} is for admins only", rate)
        if rule := self._matches(role.deny, target):
            return Decision(False, role_name, f"role {role_name!r} denies {rule!r}", rate)
        if fn in DEFAULT_WHITELIST or fn in allow:
            return Decision(True, role_name, f"{fn} is whitelisted", rate)
        if rule := self._matches(role.allow, target):
            return Decision(True, role_name, f"role {role_name!r} allows {rule!r}", rate)
        if role_name not in self.roles and role_name != PUBLIC:
            reason = f"role {role_name!r} does not exist, so it may not call {target}"
            return Decision(False, role_name, reason, rate)
        return Decision(False, role_name, f"role {role_name!r} may not call {target}", rate)
