"""The policy's bucket: opened and seeded on start (the first admin, the config, a role for
token holders), and the one way a change is made: checked for an admin, written, applied
here at once and recorded in the audit stream."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from ...bus import BadRequest, Forbidden, Keystore, Unauthorized, address_to_public_key
from ...bus.jetstream import Bucket
from ...runtime import Actor, current_call
from ...runtime.audit import ensure_audit, record
from ...runtime.policy import PolicyConfig, PolicyState, Role, load_state

__all__ = ["PolicyStore", "check_address", "check_role", "check_token_name", "encode"]

_ROLE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
encode = msgspec.json.Encoder().encode


def check_address(key: str) -> str:
    try:
        address_to_public_key(key)
    except Unauthorized as exc:
        raise BadRequest(f"not a valid key address: {exc.message}") from None
    return key


def check_token_name(name: str) -> str:
    if not _ROLE_NAME.fullmatch(name):
        raise BadRequest(f"invalid token name {name!r}: 1-64 of [A-Za-z0-9_-]")
    return name


def check_role(role: str) -> str:
    if not _ROLE_NAME.fullmatch(role):
        raise BadRequest(f"invalid role name {role!r}: 1-64 of [A-Za-z0-9_-]")
    return role


class PolicyStore(Actor):
    """The bucket behind the policy actor and the helpers its functions share."""

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
                encode(config),
                who=self.address,
                what="set_config",
                args=msgspec.to_builtins(config),
            )
            if "user" not in state.roles:
                user = Role(allow=["*/*"])
                await self._write(
                    "role.user",
                    encode(user),
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
