"""Policy enforcement on every host: the model, the decision, the cache and quota leases.

The policy actor (:mod:`actorbus.actors.policy`) writes the policy to a JetStream KV bucket;
every host keeps a :class:`PolicyView` of it fed by a KV watch, so a decision is a few dict
lookups, and a change reaches running actors in one NATS hop. The watch does not depend on
the policy actor's process: if it is down, hosts keep deciding from the same data (fail
static); if NATS itself goes away, they decide from the last state they saw and say so.

Keys in the bucket: ``admin.<address>``, ``user.<address>`` (role name), ``role.<name>``
(:class:`Role`), ``stake.<address>`` (a number), ``config`` (:class:`PolicyConfig`),
``token.<sha256 of a bearer token>`` (:class:`TokenInfo`), ``forwarder.<address>``,
``host.<address>`` (keys that may let replicas serve, :mod:`actorbus.bus.tickets`) and
``name.<actor name>`` (the addresses that may serve that name).

Quotas: a key may make ``max(stake / role.stake2rate, config.floor)`` calls per minute,
admins are unlimited. A host borrows part of a key's budget for the current window from
the policy actor (:class:`Quotas`), spends it locally, and borrows again when it runs out,
so a key's rate holds across every replica and host without a round trip per call. A lease
holds only for the policy revision it was granted under: after any change (a stake, a
role, the config) the next call hands back what is left and borrows at the new rate, so a
change applies to the very next call, not after the old lease is spent.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import msgspec

from ..bus import NATS, ActorError, RateLimited, Unavailable
from ..bus.jetstream import Bucket

__all__ = [
    "DEFAULT_WHITELIST",
    "PUBLIC",
    "Decision",
    "Grant",
    "PolicyConfig",
    "PolicyState",
    "PolicyView",
    "Quotas",
    "Role",
    "TokenInfo",
    "load_state",
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


class Grant(msgspec.Struct, frozen=True):
    """A lease of ``granted`` calls for ``window``; ``retry_after`` when none are left."""

    granted: int
    window: int
    retry_after: float = 0.0


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
        except msgspec.DecodeError as exc:
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
        return Decision(False, role_name, f"role {role_name!r} may not call {target}", rate)


async def load_state(bucket: Bucket) -> PolicyState:
    """The policy in ``bucket`` as it is now."""
    state = PolicyState()
    async for item in bucket.watch():
        if item is None:
            break
        state.apply(*item)
    return state


class PolicyView:
    """A host's live copy of the policy in bucket ``bucket``.

    Until the bucket exists (no policy actor ever ran on this NATS) calls are not
    policy-checked and the host says so; once it has seen the bucket it enforces for good,
    from the last state it saw if the watch breaks.
    """

    def __init__(self, nc: NATS, bucket: str) -> None:
        self._nc = nc
        self.bucket = bucket
        self.state = PolicyState()
        self.enforced = False
        self.unreadable = ""
        """Why the bucket could not be read, while no policy was ever loaded nor known to
        be absent: calls are refused then (503), never let through unchecked."""
        self._absent = False  # the bucket was missing when last looked at

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow the bucket until cancelled; started once the first state is loaded (or
        the bucket is known to be missing, or cannot be read)."""
        ready = False

        def mark_ready() -> None:
            nonlocal ready
            if not ready:
                ready = True
                task_status.started()

        warned = False
        delay = 0.5
        while True:
            try:
                bucket = await Bucket.find(self._nc, self.bucket)
                self._absent = bucket is None
                if bucket is None:
                    self.unreadable = ""  # no policy here: nothing to enforce
                    if not warned:
                        log.warning(
                            "no policy in bucket %s yet: calls are not policy-checked "
                            "until a policy actor starts",
                            self.bucket,
                        )
                        warned = True
                else:
                    await self._follow(bucket, mark_ready)
            except Unavailable as exc:
                if self.enforced:
                    log.warning("policy watch lost (%s): deciding from the cached policy", exc)
                elif self._absent:
                    log.debug("policy bucket unreadable (%s); it was missing before", exc)
                else:
                    if not self.unreadable:
                        log.warning("policy unreadable (%s): refusing calls until it is", exc)
                    self.unreadable = exc.message
            mark_ready()
            # Until a policy exists, look for it often: calls are open meanwhile.
            await anyio.sleep(delay if self.enforced else 0.25)
            delay = min(delay * 2, 5.0)

    async def _follow(self, bucket: Bucket, mark_ready: Callable[[], None]) -> None:
        fresh = PolicyState()
        caught_up = False
        async for item in bucket.watch():
            if item is None:
                if not caught_up:
                    caught_up = True
                    fresh.revision = self.state.revision + 1
                    self.state = fresh
                    self.enforced = True
                    self.unreadable = ""
                    log.info("policy loaded from %s", self.bucket)
                    mark_ready()
                continue
            key, value = item
            if caught_up:
                self.state.apply(key, value)
            else:
                fresh.apply(key, value)


class _Lease:
    __slots__ = ("left", "local", "refused_until", "revision", "window")

    def __init__(
        self,
        window: int,
        left: int,
        revision: int,
        refused_until: float = 0.0,
        local: bool = False,
    ) -> None:
        self.window = window
        self.left = left
        self.revision = revision
        self.refused_until = refused_until
        self.local = local
        """Whether this is the host's own share, taken when the policy actor was out of
        reach (once per window)."""


LeaseFn = Callable[[str, int], Awaitable[Grant]]
"""Borrow up to ``want`` calls of a key's budget: ``lease(key, want)``."""
ReleaseFn = Callable[[str, int, int], Awaitable[None]]
"""Hand back unused calls: ``release(key, window, count)``."""


class Quotas:
    """Spends leases of each caller's budget; borrows more from the policy actor.

    One borrow at a time per caller; a refused borrow is remembered until the window ends
    (or the policy changes), so an exhausted key costs no round trip per call. A lease is
    good for the policy ``revision`` it was granted under only. If the policy actor cannot
    be reached, the host allows itself a tenth of the key's budget once per window and logs
    it.
    """

    def __init__(self, lease: LeaseFn, release: ReleaseFn, revision: Callable[[], int]) -> None:
        self._lease = lease
        self._release = release
        self._revision = revision
        self._leases: dict[str, _Lease] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def take(self, key: str, rate: float, window: float) -> None:
        """Spend one call of ``key``'s budget (``rate`` per minute); raises
        :class:`RateLimited` with ``retry_after`` when none is left."""
        now = time.time()
        index = int(now // window)
        revision = self._revision()
        lease = self._leases.get(key)
        if (
            lease is not None
            and lease.left > 0
            and (lease.window, lease.revision)
            == (
                index,
                revision,
            )
        ):
            lease.left -= 1
            return
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            lease = self._leases.get(key)
            if lease is not None and lease.window == index and lease.revision == revision:
                if lease.left > 0:
                    lease.left -= 1
                    return
                if lease.refused_until > now:
                    raise RateLimited(
                        f"quota of {rate:g} calls/min used up",
                        retry_after=lease.refused_until - now,
                    )
            elif lease is not None and lease.window == index and lease.left > 0 and not lease.local:
                # Granted under an older policy: what is left goes back, so the new rate
                # counts only the calls really made in this window.
                left, lease.left = lease.left, 0
                try:
                    await self._release(key, index, left)
                except ActorError as exc:
                    log.warning("could not hand back a stale lease for %s: %s", key, exc)
            budget = rate * window / 60
            want = max(1, math.ceil(budget / 10))
            local = False
            try:
                grant = await self._lease(key, want)
            except ActorError as exc:
                if lease is not None and lease.window == index and lease.local:
                    log.warning("policy actor unreachable for a lease (%s), local share spent", exc)
                    grant = Grant(0, index, (index + 1) * window - now)
                else:
                    log.warning("policy actor unreachable for a lease (%s): local share", exc)
                    grant = Grant(max(1, int(budget // 10)), index)
                    local = True
            if len(self._leases) > _MEMO_LIMIT:
                self._leases = {k: v for k, v in self._leases.items() if v.window >= index}
                self._locks = {k: v for k, v in self._locks.items() if k in self._leases}
            if grant.granted <= 0:
                until = now + max(grant.retry_after, 0.001)
                self._leases[key] = _Lease(grant.window, 0, revision, until, local)
                raise RateLimited(
                    f"quota of {rate:g} calls/min used up", retry_after=grant.retry_after
                )
            self._leases[key] = _Lease(grant.window, grant.granted - 1, revision, local=local)

    def unused(self) -> list[tuple[str, int, int]]:
        """``(key, window, calls)`` still held of leases, to hand back when the host stops
        (not of local shares: the policy actor never lent them)."""
        return [
            (k, v.window, v.left) for k, v in self._leases.items() if v.left > 0 and not v.local
        ]
