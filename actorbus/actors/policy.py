"""The policy actor: the one authority for who may call what, and how fast.

After commune's access module. State lives in the JetStream KV bucket ``actor_<name>``
(file store: it survives restarts of this actor and of the nats-server); every host
enforces it from its own cached copy (:mod:`actorbus.runtime.policy`). Every change must be
signed by an admin and is recorded (who, what, when) in the audit stream
(:mod:`actorbus.runtime.audit`).
The key that first starts the policy actor (``$ACTOR_KEY``, ``default``) is its first admin.

Quota leases: ``lease(key, want)`` hands a host up to ``want`` calls of ``key``'s budget for
the current window, never more than the budget in total; ``release`` takes back what a host
did not use. The counters live in this process: a restart mid-window forgets what was lent
in that window (at most one window's budget is lent twice).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import msgspec

from ..bus import (
    BadRequest,
    Forbidden,
    Keystore,
    NotFound,
    Unauthorized,
    address_to_public_key,
    new_token,
    token_id,
    token_keypair,
)
from ..bus.jetstream import Bucket
from ..runtime import Actor, current_call
from ..runtime.audit import ensure_audit, read_audit, record
from ..runtime.policy import (
    PUBLIC,
    Decision,
    Grant,
    PolicyConfig,
    PolicyState,
    Role,
    TokenInfo,
    load_state,
)

__all__ = ["Policy"]

_ROLE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_encode = msgspec.json.Encoder().encode


def _address(key: str) -> str:
    try:
        address_to_public_key(key)
    except Unauthorized as exc:
        raise BadRequest(f"not a valid key address: {exc.message}") from None
    return key


def _token_name(name: str) -> str:
    if not _ROLE_NAME.fullmatch(name):
        raise BadRequest(f"invalid token name {name!r}: 1-64 of [A-Za-z0-9_-]")
    return name


def _role_name(role: str) -> str:
    if not _ROLE_NAME.fullmatch(role):
        raise BadRequest(f"invalid role name {role!r}: 1-64 of [A-Za-z0-9_-]")
    return role


class Policy(Actor):
    """Admins, roles with allow/deny patterns, stakes and rate quotas."""

    name = "policy"
    # Anyone may ask about themselves and hosts must reach the lease calls; the handlers
    # check further (admin, own key, registered actor).
    allow_fns = frozenset({"decide", "lease", "release", "user2role"})
    quotas = False

    def __init__(self) -> None:
        self._granted: dict[tuple[str, int], int] = {}
        self._actors: tuple[float, frozenset[str]] = (0.0, frozenset())

    async def on_start(self) -> None:
        settings = self.settings
        self._bucket = await Bucket.open(
            self.nc, settings.policy_bucket, ttl=None, replicas=settings.js_replicas
        )
        await ensure_audit(self.nc, replicas=settings.js_replicas)
        state = await load_state(self._bucket)
        if not state.admins:
            first = Keystore(settings.home).load(settings.key, create=True).address
            await self._write(
                "admin." + first, b"1", who=self.address, what="first_admin", args={"key": first}
            )
        if not state.configured:  # a new policy: its config, and a role for token holders
            config = PolicyConfig(window=settings.quota_window)
            await self._write(
                "config",
                _encode(config),
                who=self.address,
                what="set_config",
                args=msgspec.to_builtins(config),
            )
            if "user" not in state.roles:
                user = Role(allow=["*/*"])
                await self._write(
                    "role.user",
                    _encode(user),
                    who=self.address,
                    what="set_role",
                    args={"role": "user", **msgspec.to_builtins(user)},
                )

    # -- helpers -----------------------------------------------------------------------

    @property
    def state(self) -> PolicyState:
        view = self.__actorbus_policy__
        assert view is not None
        return view.state

    def _caller(self) -> str:
        return current_call().caller

    def _require_admin(self) -> str:
        caller = self._caller()
        if caller not in self.state.admins:
            raise Forbidden("only a policy admin may do this")
        return caller

    async def _write(
        self, key: str, value: bytes | None, *, who: str, what: str, args: dict[str, Any]
    ) -> None:
        """Change one entry, apply it here at once (read your writes), record it."""
        if value is None:
            await self._bucket.delete(key)
        else:
            await self._bucket.put(key, value)
        view = self.__actorbus_policy__
        if view is not None:
            view.state.apply(key, value)
        await record(self.nc, self.name or "policy", who, what, args)

    async def _change(self, what: str, entry: str, value: bytes | None, /, **args: Any) -> None:
        await self._write(entry, value, who=self._require_admin(), what=what, args=args)

    # -- admins and users --------------------------------------------------------------

    async def add_admin(self, key: str) -> list[str]:
        """Make ``key`` an admin; returns the admins."""
        await self._change("add_admin", "admin." + _address(key), b"1", key=key)
        return sorted(self.state.admins)

    async def rm_admin(self, key: str) -> list[str]:
        """Remove admin ``key`` (never the last one); returns the admins."""
        self._require_admin()
        if key not in self.state.admins:
            raise NotFound(f"{key} is not an admin")
        if self.state.admins == {key}:
            raise BadRequest("cannot remove the last admin")
        await self._change("rm_admin", "admin." + key, None, key=key)
        return sorted(self.state.admins)

    async def admins(self) -> list[str]:
        self._require_admin()
        return sorted(self.state.admins)

    async def add_user(self, key: str, role: str = "user") -> dict[str, str]:
        """Give ``key`` the role ``role``; returns ``{key: role}``."""
        await self._change(
            "add_user", "user." + _address(key), _encode(_role_name(role)), key=key, role=role
        )
        return {key: role}

    async def rm_user(self, key: str) -> None:
        """Forget ``key``'s role (it becomes ``public``)."""
        if key not in self.state.users:
            self._require_admin()
            raise NotFound(f"{key} has no role")
        await self._change("rm_user", "user." + key, None, key=key)

    async def users(self) -> dict[str, str]:
        """Every key with a role."""
        self._require_admin()
        return dict(sorted(self.state.users.items()))

    async def user2role(self, key: str | None = None) -> str:
        """The role of ``key`` (default: the caller; others' roles are for admins)."""
        caller = self._caller()
        key = key or caller
        if key != caller:
            self._require_admin()
        return self.state.role_of(key)

    async def role2users(self, role: str) -> list[str]:
        self._require_admin()
        return sorted(k for k, r in self.state.users.items() if r == role)

    # -- roles, stakes, config ---------------------------------------------------------

    async def set_role(
        self,
        role: str,
        allow: list[str] | None = None,
        deny: list[str] | None = None,
        stake2rate: float = 1.0,
    ) -> dict[str, Any]:
        """Define ``role``: ``actor/fn`` patterns it may (allow) and may not (deny) call, and
        the stake per call/minute (``stake2rate``)."""
        if not stake2rate > 0:
            raise BadRequest("stake2rate must be positive")
        rules = Role(allow=list(allow or []), deny=list(deny or []), stake2rate=stake2rate)
        for pattern in (*rules.allow, *rules.deny):
            if "/" not in pattern:
                raise BadRequest(f"pattern {pattern!r} is not ACTOR/FN (wildcards: *)")
        await self._change(
            "set_role",
            "role." + _role_name(role),
            _encode(rules),
            role=role,
            **msgspec.to_builtins(rules),
        )
        return {role: msgspec.to_builtins(rules)}

    async def rm_role(self, role: str) -> None:
        if role not in self.state.roles:
            self._require_admin()
            raise NotFound(f"no role {role!r}")
        await self._change("rm_role", "role." + role, None, role=role)

    async def roles(self) -> dict[str, Any]:
        """Every defined role (``public`` applies to keys without one)."""
        self._require_admin()
        roles = dict(self.state.roles)
        roles.setdefault(PUBLIC, Role())
        return {name: msgspec.to_builtins(r) for name, r in sorted(roles.items())}

    async def set_stake(self, key: str, amount: float) -> dict[str, float]:
        if not (amount >= 0 and math.isfinite(amount)):
            raise BadRequest("a stake is a finite number >= 0")
        await self._change(
            "set_stake", "stake." + _address(key), _encode(amount), key=key, amount=amount
        )
        return {key: amount}

    async def stakes(self) -> dict[str, float]:
        self._require_admin()
        return dict(sorted(self.state.stakes.items()))

    async def config(self) -> dict[str, Any]:
        """The quota window (seconds), the rate floor (calls/min) and the local-key exemption."""
        self._require_admin()
        return msgspec.to_builtins(self.state.config)  # type: ignore[no-any-return]

    # -- bearer tokens and forwarders (the gateway's identities) ------------------------

    async def issue_token(self, name: str, role: str = "user") -> dict[str, str]:
        """A new bearer token ``name`` whose holder calls with role ``role`` (its own key,
        derived from the token). The token is in this answer only: the policy keeps its
        hash, never the token."""
        who = self._require_admin()
        _token_name(name)
        if any(t.name == name for t in self.state.tokens.values()):
            raise BadRequest(f"a token named {name!r} exists; revoke it first")
        token = new_token()
        address = token_keypair(token).address
        info = TokenInfo(name=name, address=address, created=time.time())
        await self._write(
            "user." + address,
            _encode(_role_name(role)),
            who=who,
            what="add_user",
            args={"key": address, "role": role},
        )
        await self._write(
            "token." + token_id(token),
            _encode(info),
            who=who,
            what="issue_token",
            args={"name": name, "role": role, "address": address},
        )
        return {"name": name, "token": token, "address": address, "role": role}

    async def tokens(self) -> list[dict[str, Any]]:
        """Every token: name, address, role, created (never the token)."""
        self._require_admin()
        return [
            {**msgspec.to_builtins(t), "role": self.state.role_of(t.address)}
            for t in sorted(self.state.tokens.values(), key=lambda t: t.name)
        ]

    async def revoke_token(self, name: str) -> dict[str, str]:
        """Stop token ``name``: the gateway refuses it at once, and its key loses its role
        and stake (so the holder cannot go on signing with it directly either)."""
        who = self._require_admin()
        found = [(h, t) for h, t in self.state.tokens.items() if t.name == name]
        if not found:
            raise NotFound(f"no token named {name!r}")
        for digest, info in found:
            await self._write(
                "token." + digest, None, who=who, what="revoke_token", args={"name": name}
            )
            for entry in ("user.", "stake."):
                await self._write(
                    entry + info.address,
                    None,
                    who=who,
                    what="revoke_token",
                    args={"name": name, "key": info.address},
                )
        return {"revoked": name}

    async def add_forwarder(self, key: str) -> list[str]:
        """Trust ``key`` (a gateway's) to call on behalf of other keys it has authenticated;
        returns the forwarders."""
        await self._change("add_forwarder", "forwarder." + _address(key), b"1", key=key)
        return sorted(self.state.forwarders)

    async def rm_forwarder(self, key: str) -> list[str]:
        self._require_admin()
        if key not in self.state.forwarders:
            raise NotFound(f"{key} is not a forwarder")
        await self._change("rm_forwarder", "forwarder." + key, None, key=key)
        return sorted(self.state.forwarders)

    async def forwarders(self) -> list[str]:
        self._require_admin()
        return sorted(self.state.forwarders)

    async def set_config(
        self,
        window: float | None = None,
        floor: float | None = None,
        local_exempt: bool | None = None,
    ) -> dict[str, Any]:
        """Quota window (seconds), the rate floor (calls/min) and the local-key exemption."""
        current = self.state.config
        config = PolicyConfig(
            window=current.window if window is None else window,
            floor=current.floor if floor is None else floor,
            local_exempt=current.local_exempt if local_exempt is None else local_exempt,
        )
        if not config.window > 0 or not config.floor >= 0:
            raise BadRequest("window must be > 0 and floor >= 0")
        await self._change("set_config", "config", _encode(config), **msgspec.to_builtins(config))
        return msgspec.to_builtins(config)  # type: ignore[no-any-return]

    # -- decisions and the audit log ---------------------------------------------------

    async def decide(self, key: str, actor: str, fn: str) -> dict[str, Any]:
        """Whether ``key`` may call ``actor/fn`` and why (others' decisions are for admins)."""
        if key != self._caller():
            self._require_admin()
        allow: frozenset[str] = frozenset()
        deny: frozenset[str] = frozenset()
        entries = await self.client.entries(actor)
        if entries:
            allow, deny = frozenset(entries[0].allow_fns), frozenset(entries[0].deny_fns)
        decision: Decision = self.state.decide(_address(key), actor, fn, allow, deny)
        return msgspec.to_builtins(decision)  # type: ignore[no-any-return]

    async def log(self, limit: int = 100) -> list[dict[str, Any]]:
        """The last ``limit`` admin actions, oldest first: this policy's changes and node
        control (each record's ``source`` says which actor recorded it)."""
        self._require_admin()
        own = self.name or "policy"
        return await read_audit(self.nc, limit, lambda s: s == own or s.startswith("node."))

    # -- quota leases (called by hosts) ------------------------------------------------

    async def _is_actor(self, key: str) -> bool:
        """Whether ``key`` is a registered actor's (a "local" key); cached for 5 s."""
        expires, actors = self._actors
        if key not in actors or expires < time.monotonic():
            actors = frozenset(e.address for e in await self.client.entries())
            self._actors = (time.monotonic() + 5.0, actors)
        return key in actors

    async def _require_actor(self) -> None:
        caller = self._caller()
        if caller not in self.state.admins and not await self._is_actor(caller):
            raise Forbidden("only registered actors may borrow quota")

    async def lease(self, key: str, want: int) -> dict[str, Any]:
        """Lend up to ``want`` calls of ``key``'s budget for the current window."""
        await self._require_actor()
        state = self.state
        window = state.config.window
        now = time.time()
        index = int(now // window)
        rate = state.rate_of(key)
        if rate is None or (state.config.local_exempt and await self._is_actor(key)):
            # Admins, and actors' own keys when exempt: not counted.
            return msgspec.to_builtins(Grant(max(want, 1), index))  # type: ignore[no-any-return]
        budget = int(rate * window / 60)
        if len(self._granted) > 100_000:
            self._granted = {k: v for k, v in self._granted.items() if k[1] >= index}
        lent = self._granted.get((key, index), 0)
        granted = max(0, min(max(want, 1), budget - lent))
        self._granted[key, index] = lent + granted
        retry_after = 0.0 if granted else (index + 1) * window - now
        return msgspec.to_builtins(Grant(granted, index, retry_after))  # type: ignore[no-any-return]

    async def release(self, key: str, window: int, count: int) -> None:
        """Take back ``count`` unused calls of a lease for ``window``."""
        await self._require_actor()
        lent = self._granted.get((key, window))
        if lent:
            self._granted[key, window] = max(0, lent - max(count, 0))
