"""The policy's model and its decision, as every host makes it (from its copy of the
policy, :mod:`.policy_view`).

Keys in the bucket: ``admin.<address>``, ``user.<address>`` (role name), ``role.<name>``
(:class:`Role`), ``stake.<address>`` (a number), ``config`` (:class:`PolicyConfig`),
``token.<sha256 of a bearer token>`` (:class:`TokenInfo`), ``forwarder.<address>``,
``host.<address>`` (keys that may let replicas serve, :mod:`actorbus.bus.tickets`) and
``name.<actor name>`` (the addresses that may serve that name); each a record signed by
the policy actor (:mod:`actorbus.bus.records`).

Quotas: a key may make ``max(stake / role.stake2rate, config.floor)`` calls per minute,
admins are unlimited (spent through leases, :mod:`.quotas`).
"""

from __future__ import annotations

import fnmatch
import logging
import re

import msgspec

from ..bus.wire import UNDECODABLE

__all__ = [
    "DEFAULT_WHITELIST",
    "PUBLIC",
    "Decision",
    "PolicyConfig",
    "PolicyState",
    "Role",
    "TokenInfo",
]

log = logging.getLogger("actorbus.policy")

DEFAULT_WHITELIST = frozenset({"info", "schema", "fns", "whitelist", "blacklist", "is_admin"})
"""What every caller may call on every actor: enough to discover it."""

PUBLIC = "public"
_MEMO_LIMIT = 65536


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


_role_decoder = msgspec.json.Decoder(Role)
_config_decoder = msgspec.json.Decoder(PolicyConfig)
_token_decoder = msgspec.json.Decoder(TokenInfo)
_number_decoder = msgspec.json.Decoder(float)
_text_decoder = msgspec.json.Decoder(str)
_addresses_decoder = msgspec.json.Decoder(list[str])


def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


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
        self.hosts: set[str] = set()
        """Keys that may let replicas serve a name (besides admins)."""
        self.revoked: set[str] = set()
        """Keys of revoked tokens: they may call nothing, and their jobs stop."""
        self.names: dict[str, list[str]] = {}
        """Per actor name, the addresses that may serve it."""
        self.config = PolicyConfig()
        self.configured = False
        self.revision = 0
        self._patterns: dict[str, re.Pattern[str]] = {}
        self._memo: dict[tuple[str, str, str, bool], Decision] = {}

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
                    self.hosts.discard(subject)
                else:
                    self.hosts.add(subject)
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
            elif key == "config":
                self.config = PolicyConfig() if value is None else _config_decoder.decode(value)
                self.configured = value is not None
            else:
                return
        except UNDECODABLE as exc:
            log.warning("policy: ignoring malformed entry %s: %s", key, exc)
            return
        self.revision += 1
        self._memo.clear()

    def role_of(self, key: str) -> str:
        return self.users.get(key, PUBLIC)

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
        memo_key = (key, actor, fn, forwarded)
        decision = self._memo.get(memo_key)
        if decision is not None:
            return decision
        decision = self._decide(key, actor, fn, allow, deny, forwarded)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[memo_key] = decision
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
