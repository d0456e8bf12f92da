"""The policy actor: admins, roles with allow/deny patterns, stakes, the quota config,
decisions and the audit log; tokens and forwarders (:mod:`.credentials`) and quota leases
(:mod:`.quotas`) are its other parts, all written through :mod:`.store`."""

from __future__ import annotations

import math
from typing import Any

import msgspec

from ...bus import BadRequest, NotFound
from ...client.audit import read_audit
from ...host.pages import MAX_PAGE
from ...host.policy import PUBLIC, Decision, PolicyConfig, Role
from .callout import AuthCallout
from .credentials import Credentials
from .logins import Logins
from .quotas import MAX_WINDOW, Quotas
from .store import check_address, check_role, encode

__all__ = ["Policy"]


class Policy(Credentials, Logins, Quotas, AuthCallout):
    """Admins, roles with allow/deny patterns, stakes and rate quotas."""

    name = "policy"
    # Anyone may ask about themselves, hosts must reach the lease calls, replicas their
    # name's claim, jobs actors their jobs' queues and gateways the binding of logins; the
    # handlers check further (admin, own key, registered actor, ticket, forwarder).
    allow_fns = frozenset(
        {"claim", "decide", "lease", "oidc_bind", "open_queue", "release", "user2role"}
    )
    quotas = False

    # -- admins and users --------------------------------------------------------------

    async def add_admin(self, key: str) -> list[str]:
        """Make ``key`` an admin; returns the admins."""
        await self._change("add_admin", "admin." + check_address(key), b"1", key=key)
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

    async def admins(self, limit: int = MAX_PAGE, after: str = "") -> list[str]:
        """The admins (a page: at most ``limit``, after ``after``)."""
        self._require_admin()
        return self._page("admins", self.state.admins, after, limit)

    async def add_user(self, key: str, role: str = "user") -> dict[str, str]:
        """Give ``key`` the role ``role``; returns ``{key: role}``."""
        await self._change(
            "add_user",
            "user." + check_address(key),
            encode(await self._existing_role(role)),
            key=key,
            role=role,
        )
        return {key: role}

    async def add_users(self, users: dict[str, str]) -> int:
        """Give each key of ``users`` its role, at most 1,000 keys a call (``actor policy
        user add --from FILE`` and :meth:`Client.add_users` send a long list in such
        batches); one audit record for the batch. Returns how many keys."""
        who = self._require_admin()
        if len(users) > MAX_PAGE:
            raise BadRequest(f"at most {MAX_PAGE} users a call: send a long list in batches")
        roles = {role: await self._existing_role(role) for role in set(users.values())}
        changes = {"user." + check_address(k): encode(roles[r]) for k, r in users.items()}
        await self._write_many(changes, who=who, what="add_users", args={"users": users})
        return len(users)

    async def rm_user(self, key: str) -> None:
        """Forget ``key``'s role (it becomes ``public``)."""
        if key not in self.state.users:
            self._require_admin()
            raise NotFound(f"{key} has no role")
        await self._change("rm_user", "user." + key, None, key=key)

    async def users(self, limit: int = MAX_PAGE, after: str = "") -> dict[str, str]:
        """The keys with a role and their roles (a page: at most ``limit``, the keys after
        ``after``; a shorter page is the last)."""
        self._require_admin()
        users = self.state.users
        return {key: users[key] for key in self._page("users", users, after, limit)}

    async def user2role(self, key: str | None = None) -> str:
        """The role of ``key`` (default: the caller; others' roles are for admins)."""
        caller = self._caller()
        key = key or caller
        if key != caller:
            self._require_admin()
        return self.state.role_of(key)

    async def role2users(self, role: str, limit: int = MAX_PAGE, after: str = "") -> list[str]:
        """The keys with ``role`` (a page: at most ``limit``, after ``after``)."""
        self._require_admin()
        users = self.state.users
        found: list[str] = []
        while len(found) < limit:  # pages of every key, until ``limit`` of them hold it
            keys = self._page("users", users, after, MAX_PAGE)
            found += [key for key in keys if users[key] == role][: limit - len(found)]
            if len(keys) < MAX_PAGE:
                break
            after = keys[-1]
        return found

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
        rules = Role(allow=list(allow or []), deny=list(deny or []), stake2rate=stake2rate)
        return await self._store_role(role, rules)

    async def edit_role(
        self,
        role: str,
        allow: list[str] | None = None,
        deny: list[str] | None = None,
        remove: bool = False,
        stake2rate: float | None = None,
    ) -> dict[str, Any]:
        """Add the ``allow`` and ``deny`` patterns to ``role`` (made if new), or with
        ``remove`` take them out of it, leaving its other rules as they are; ``stake2rate``
        if given."""
        current = self.state.roles.get(role)
        if current is None and (remove or role != check_role(role)):
            self._require_admin()
            raise NotFound(f"no role {role!r} (roles: {', '.join(sorted(self.state.roles))})")
        base = current or Role()
        if remove:
            missing = [p for p in allow or [] if p not in base.allow]
            missing += [p for p in deny or [] if p not in base.deny]
            if missing:
                self._require_admin()
                raise NotFound(f"role {role!r} has no rule {missing[0]!r}")
            new_allow = [p for p in base.allow if p not in (allow or [])]
            new_deny = [p for p in base.deny if p not in (deny or [])]
        else:
            new_allow = base.allow + [p for p in allow or [] if p not in base.allow]
            new_deny = base.deny + [p for p in deny or [] if p not in base.deny]
        rate = base.stake2rate if stake2rate is None else stake2rate
        return await self._store_role(role, Role(new_allow, new_deny, rate))

    async def _store_role(self, role: str, rules: Role) -> dict[str, Any]:
        if not rules.stake2rate > 0:
            raise BadRequest("stake2rate must be positive")
        for pattern in (*rules.allow, *rules.deny):
            if "/" not in pattern:
                raise BadRequest(f"pattern {pattern!r} is not ACTOR/FN (wildcards: *)")
        await self._change(
            "set_role",
            "role." + check_role(role),
            encode(rules),
            role=role,
            **msgspec.to_builtins(rules),
        )
        return {role: msgspec.to_builtins(rules)}

    async def rm_role(self, role: str) -> None:
        """Remove ``role``; refused while keys hold it (they would hold a role that allows
        nothing, and the rules of any role made later under that name)."""
        if role not in self.state.roles:
            self._require_admin()
            raise NotFound(f"no role {role!r}")
        holders = sorted(key for key, held in self.state.users.items() if held == role)
        if holders:
            self._require_admin()
            shown = ", ".join(holders[:3]) + (", ..." if len(holders) > 3 else "")
            raise BadRequest(
                f"role {role!r} is held by {len(holders)} keys ({shown}): give them another "
                "role first (`actor policy user add KEY --role R`, or `user rm KEY`)"
            )
        mapped = sorted(i.issuer for i in self.state.issuers.values() if role in i.role_names)
        if mapped:
            self._require_admin()
            raise BadRequest(
                f"role {role!r} is what OIDC logins of {', '.join(mapped)} are mapped to: "
                "unmap it first (`actor policy oidc unmap --issuer URL --claim NAME=VALUE`)"
            )
        await self._change("rm_role", "role." + role, None, role=role)

    async def roles(self, limit: int = MAX_PAGE, after: str = "") -> dict[str, Any]:
        """The defined roles (``public`` applies to keys without one; a page: at most
        ``limit``, after ``after``)."""
        self._require_admin()
        roles = {PUBLIC: Role(), **self.state.roles}
        names = self._page("roles", roles, after, limit)
        return {name: msgspec.to_builtins(roles[name]) for name in names}

    async def set_stake(self, key: str, amount: float) -> dict[str, float]:
        if not (amount >= 0 and math.isfinite(amount)):
            raise BadRequest("a stake is a finite number >= 0")
        await self._change(
            "set_stake", "stake." + check_address(key), encode(amount), key=key, amount=amount
        )
        return {key: amount}

    async def stakes(self, limit: int = MAX_PAGE, after: str = "") -> dict[str, float]:
        """The keys' stakes (a page: at most ``limit``, the keys after ``after``)."""
        self._require_admin()
        stakes = self.state.stakes
        return {key: stakes[key] for key in self._page("stakes", stakes, after, limit)}

    async def config(self) -> dict[str, Any]:
        """The quota window (seconds), the rate floor (calls/min) and the local-key exemption."""
        self._require_admin()
        return msgspec.to_builtins(self.state.config)  # type: ignore[no-any-return]

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
        if not 0 < config.window <= MAX_WINDOW or not config.floor >= 0:
            raise BadRequest(f"window must be > 0 and <= {MAX_WINDOW:g} (a day), floor >= 0")
        await self._change("set_config", "config", encode(config), **msgspec.to_builtins(config))
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
        decision: Decision = self.state.decide(check_address(key), actor, fn, allow, deny)
        return msgspec.to_builtins(decision)  # type: ignore[no-any-return]

    async def log(self, limit: int = 100, before: int = 0) -> list[dict[str, Any]]:
        """The last ``limit`` admin actions (at most 1,000), or the last before the record
        whose ``seq`` is ``before``, oldest first: this policy's changes and node control
        (each record's ``source`` says which actor recorded it, ``by`` which key signed it;
        one not signed by a key of its source is marked ``forged``)."""
        self._require_admin()
        own = self.name or "policy"

        def writers(source: str) -> list[str]:
            return [self.address] if source == own else self.state.names.get(source, [])

        return await read_audit(
            self.nc, limit, lambda s: s == own or s.startswith("node."), writers, before=before
        )
