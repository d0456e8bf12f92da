"""Who may call as whom: bearer tokens (their holders sign as a key derived from the
token, PROTOCOL.md section 8) and forwarders (keys trusted to call on behalf of others,
section 3): the identities the HTTP gateway uses."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from ...bus import BadRequest, NotFound, new_token, token_id, token_keypair
from ...host.pages import MAX_PAGE
from ...host.policy import TokenInfo
from .store import PolicyStore, check_address, check_token_name, encode

__all__ = ["Credentials"]


class Credentials(PolicyStore):
    """Tokens and forwarders (admins only)."""

    async def issue_token(self, name: str, role: str = "user") -> dict[str, str]:
        """A new bearer token ``name`` whose holder calls with role ``role`` (its own key,
        derived from the token). The token is in this answer only: the policy keeps its
        hash, never the token."""
        who = self._require_admin()
        check_token_name(name)
        if any(t.name == name for t in self.state.tokens.values()):
            raise BadRequest(f"a token named {name!r} exists; revoke it first")
        token = new_token()
        address = token_keypair(token).address
        info = TokenInfo(name=name, address=address, created=time.time())
        await self._write(
            "user." + address,
            encode(await self._existing_role(role)),
            who=who,
            what="add_user",
            args={"key": address, "role": role},
        )
        await self._write(
            "token." + token_id(token),
            encode(info),
            who=who,
            what="issue_token",
            args={"name": name, "role": role, "address": address},
        )
        return {"name": name, "token": token, "address": address, "role": role}

    async def tokens(self, limit: int = MAX_PAGE, after: str = "") -> list[dict[str, Any]]:
        """The tokens by name: name, address, role, created (never the token; a page: at
        most ``limit``, the names after ``after``)."""
        self._require_admin()
        by_name = {t.name: t for t in self.state.tokens.values()}
        return [
            {**msgspec.to_builtins(t), "role": self.state.role_of(t.address)}
            for t in (by_name[n] for n in self._page("tokens", by_name, after, limit))
        ]

    async def revoke_token(self, name: str) -> dict[str, str]:
        """Stop token ``name``: the gateway refuses it at once, its key loses its role and
        stake and may call nothing (the holder cannot go on signing with it directly
        either), and its jobs stop."""
        who = self._require_admin()
        found = [(h, t) for h, t in self.state.tokens.items() if t.name == name]
        if not found:
            raise NotFound(f"no token named {name!r}")
        for digest, info in found:
            await self._write(
                "token." + digest, None, who=who, what="revoke_token", args={"name": name}
            )
            await self._write(
                "revoked." + info.address,
                b"1",
                who=who,
                what="revoke_token",
                args={"name": name, "key": info.address},
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
        await self._change("add_forwarder", "forwarder." + check_address(key), b"1", key=key)
        return sorted(self.state.forwarders)

    async def rm_forwarder(self, key: str) -> list[str]:
        self._require_admin()
        if key not in self.state.forwarders:
            raise NotFound(f"{key} is not a forwarder")
        await self._change("rm_forwarder", "forwarder." + key, None, key=key)
        return sorted(self.state.forwarders)

    async def forwarders(self, limit: int = MAX_PAGE, after: str = "") -> list[str]:
        """The trusted forwarders (a page: at most ``limit``, after ``after``)."""
        self._require_admin()
        return self._page("forwarders", self.state.forwarders, after, limit)
