"""The policy's bucket: opened and seeded on start (the first admin, the config, a role for
token holders), and the one way a change is made: checked for an admin, written, applied
here at once and recorded in the audit stream."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
import msgspec

from ...bus import (
    BadRequest,
    Forbidden,
    Gone,
    Keystore,
    Unauthorized,
    Unavailable,
    address_to_public_key,
    token_keypair,
)
from ...bus.jetstream import Bucket, when_ready
from ...bus.pins import seeded_marker
from ...bus.records import open_record, sign_record
from ...bus.subjects import DEFAULT_GATEWAY, REGISTRY_BUCKET
from ...host import Actor, current_call
from ...host.pages import SortedKeys
from ...host.policy import PUBLIC, HostGrant, PolicyConfig, PolicyState, Role
from ...host.policy_view import PolicyRecords, load_state
from ...host.replay import ensure_nonces, retire_shared_nonces
from ...node.audit import ensure_audit, record
from ...node.logs import ensure_logs
from .keeper import RecordKeeper

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


_WRITERS = 64
"""Records a bulk change writes at once."""


class PolicyStore(Actor):
    """The bucket behind the policy actor and the helpers its functions share."""

    sessions = False  # every change to the policy is signed by the admin who made it
    whole_policy = True  # it lists and counts keys

    async def on_start(self) -> None:
        self._stack = AsyncExitStack()
        self._kept_by: RecordKeeper | None = None
        self._signed = 0
        """The version of the last record this replica signed."""
        self._sorted: dict[str, SortedKeys] = {}
        await when_ready(self._open, "the policy bucket", wait=self.settings.start_wait)

    async def on_stop(self) -> None:
        await self._stack.aclose()

    @property
    def _keeper(self) -> RecordKeeper:
        """Who keeps this policy's records (from :meth:`on_start` on)."""
        if self._kept_by is None:
            raise Unavailable("the policy actor has not opened its bucket yet")
        return self._kept_by

    async def _open(self) -> None:
        settings = self.settings
        seeded = seeded_marker(settings)
        bucket = await Bucket.find(self.nc, settings.policy_bucket, direct_reads=True)
        if bucket is None and seeded.exists():
            raise Gone(
                f"the policy bucket {settings.policy_bucket} is gone, and this policy actor "
                f"made it: restore it (or, to start a new policy, remove {seeded})"
            )
        self._bucket = bucket or await Bucket.open(
            self.nc,
            settings.policy_bucket,
            ttl=None,
            replicas=settings.js_replicas,
            direct_reads=True,
            followed=True,
        )
        # The policy actor reads its buckets with direct gets, and no bucket takes a
        # rollup: buckets made before are settled so by the policy actor, which owns the
        # shared streams.
        await self._bucket.settle(followed=True)  # hosts follow it (PolicyView)
        registry = await Bucket.open(
            self.nc, REGISTRY_BUCKET, ttl=settings.registry_ttl, replicas=settings.js_replicas
        )
        await registry.settle()
        await retire_shared_nonces(self.nc)
        # Its own name's too: its replicas connect as the server's config says, no callout.
        await ensure_nonces(
            self.nc, self.name or settings.policy, settings.max_skew, replicas=settings.js_replicas
        )
        await ensure_audit(self.nc, replicas=settings.js_replicas)
        await ensure_logs(self.nc, settings)  # every node ships into it; the policy makes it
        path = seeded.with_name(f"{settings.policy_bucket}.records")
        if bucket is None:  # a new bucket is a new policy: records kept of an old one are not
            path.unlink(missing_ok=True)
        if self._kept_by is None:
            self._kept_by = await self._stack.enter_async_context(
                RecordKeeper(self._bucket, self.address, path)
            )
        self._records = PolicyRecords(settings.policy_bucket, self.address, lambda _: None)
        held: set[str] = set()
        state = await load_state(self._bucket, self._records, held)
        versions = self._records.versions
        # Written over while none of us ran (or an old record of ours put back): restored.
        kept, restored = await self._keeper.restore_missing(
            {key: versions.get(key, 0) for key in held}
        )
        if restored:  # the state with them back
            state = await load_state(self._bucket, self._records)
        if bucket is not None and seeded.exists() and not state.configured and not kept:
            raise Gone(
                f"the policy bucket {settings.policy_bucket} holds no record of this policy "
                f"actor's, which made it: restore it (or, to start a new policy, delete the "
                f"bucket and remove {seeded})"
            )
        # A new policy: its config, and from the replica that wrote it (replicas may start
        # together) the first admin and a role for token holders.
        if not state.configured:
            config = PolicyConfig(window=settings.quota_window)
            args = msgspec.to_builtins(config)
            if await self._seed("config", encode(config), "set_config", args):
                if not state.admins:
                    first = Keystore(settings.home).caller(settings.key).address
                    await self._seed("admin." + first, b"1", "first_admin", {"key": first})
                if settings.host_token:  # it runs the node's jobs actor and gateway too
                    host = token_keypair(settings.host_token).address
                    grant = HostGrant(jobs=[settings.jobs], gateway=[DEFAULT_GATEWAY])
                    args = {"key": host, **msgspec.to_builtins(grant)}
                    await self._seed("host." + host, msgspec.json.encode(grant), "add_host", args)
                if "user" not in state.roles:
                    user = Role(allow=["*/*"])
                    args = {"role": "user", **msgspec.to_builtins(user)}
                    await self._seed("role.user", encode(user), "set_role", args)
        seeded.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        seeded.touch()

    async def _seed(self, key: str, value: bytes, what: str, args: dict[str, Any]) -> bool:
        """Write ``key`` of a new policy, by this actor; whether this call wrote it."""
        return await self._create(key, value, who=self.address, what=what, args=args)

    async def _create(
        self, key: str, value: bytes, *, who: str, what: str, args: dict[str, Any]
    ) -> bool:
        """Write ``key`` unless it holds a record of this policy (an entry nobody trusts,
        such as one a stranger wrote first, is written over, and so is this policy's
        record of a removal), recorded first as made by ``who``; whether this call wrote
        it (another replica may come first)."""
        current = await self._bucket.get(key)
        if current is not None and self._keeper.ours(key, current[0]):
            removed = open_record(self._bucket.name, key, current[0]).value is None
            if not removed:
                return False
        await record(self.nc, self.name or "policy", self.key, who, what, args)
        signed = sign_record(self.key, self._bucket.name, key, value, self._version())
        if await self._bucket.update(key, signed, current[1] if current else 0) is None:
            return False
        self._keeper.note(key, signed)
        self._applied(key, value)
        return True

    async def _extend(
        self,
        key: str,
        change: Callable[[bytes | None], bytes],
        *,
        who: str,
        args: dict[str, Any],
    ) -> None:
        """Write ``change`` of the value this policy's record at ``key`` holds (``None``:
        none) over it, recorded first as made by ``who``; by compare-and-set, read and
        changed again if another write came first. Raises :class:`Unavailable` if the
        bucket cannot say."""
        while True:
            current = await self._bucket.get(key)
            data, revision = current if current else (b"", 0)
            mine = bool(data) and self._keeper.ours(key, data)
            value = change(open_record(self._bucket.name, key, data).value if mine else None)
            await record(self.nc, self.name or "policy", self.key, who, "claim_name", args)
            signed = sign_record(self.key, self._bucket.name, key, value, self._version())
            if await self._bucket.update(key, signed, revision) is not None:
                self._keeper.note(key, signed)
                self._applied(key, value)
                return

    async def _value(self, key: str) -> bytes | None:
        """The value this policy's record at ``key`` holds now, read from the bucket
        (``None``: none, removed, or not this policy's)."""
        stored = await self._bucket.get(key)
        if stored is None or not self._keeper.ours(key, stored[0]):
            return None
        return open_record(self._bucket.name, key, stored[0]).value

    async def _store(self, key: str, value: bytes | None) -> None:
        """Put ``value`` at ``key`` as a record signed by this policy (``None``: a signed
        removal, never a bare delete)."""
        signed = sign_record(self.key, self._bucket.name, key, value, self._version())
        await self._bucket.put(key, signed)
        self._keeper.note(key, signed)

    def _version(self) -> int:
        """The version of a record signed now: microseconds since the epoch, above any
        version this replica signed or saw (a clock set back does not make a change
        older than the one it replaces)."""
        seen = self._records.highest
        view = self.__actorbus_policy__
        if view is not None:
            seen = max(seen, view.records.highest)
        self._signed = max(time.time_ns() // 1000, self._signed + 1, seen + 1)
        return self._signed

    # -- helpers -----------------------------------------------------------------------

    def _page(self, collection: str, keys: Iterable[str], after: str, limit: int) -> list[str]:
        """A page of the sorted ``keys`` of ``collection`` (:mod:`actorbus.host.pages`):
        sorted again only once the policy changed."""
        state = self.state
        sorter = self._sorted.setdefault(collection, SortedKeys())
        return sorter.page(keys, (id(state), state.revision), after, limit)

    async def _existing_role(self, role: str) -> str:
        """``role``, if the policy has it (a typo must not give a key a role nobody
        defined: it would silently allow nothing); an admin asks. The bucket is read when
        this replica has not seen it (another replica may have just made it)."""
        self._require_admin()
        if (
            check_role(role) != PUBLIC
            and role not in self.state.roles
            and await self._value("role." + role) is None
        ):
            known = ", ".join(sorted({PUBLIC, *self.state.roles}))
            raise BadRequest(
                f"no role named {role!r} (roles: {known}; define one with "
                f"`actor policy role set {role} --allow PATTERN`)"
            )
        return role

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
        """Record the change in the audit trail, then make it (a signed record) and apply
        it here at once (read your writes): a change is never made unrecorded. Each step
        is tried again while JetStream elects a leader (a node just lost), until shortly
        before the call's deadline; one that cannot be recorded is not made (503)."""

        deadline = current_call().deadline - 0.5
        await when_ready(
            lambda: record(self.nc, self.name or "policy", self.key, who, what, args),
            f"the audit record of {what}",
            wait=max(0.0, deadline - time.monotonic()),
        )
        await when_ready(
            lambda: self._store(key, value),
            f"policy change {what}",
            wait=max(0.0, deadline - time.monotonic()),
        )
        self._applied(key, value)

    async def _write_many(
        self, changes: Mapping[str, bytes | None], *, who: str, what: str, args: dict[str, Any]
    ) -> None:
        """:meth:`_write` for many keys: one audit record for them all, then the signed
        records written :data:`_WRITERS` at a time (each waits for JetStream's ack)."""
        deadline = current_call().deadline - 0.5
        await when_ready(
            lambda: record(self.nc, self.name or "policy", self.key, who, what, args),
            f"the audit record of {what}",
            wait=max(0.0, deadline - time.monotonic()),
        )
        slots = anyio.Semaphore(_WRITERS)

        async def one(key: str, value: bytes | None) -> None:
            async with slots:
                await when_ready(
                    lambda: self._store(key, value),
                    f"policy change {what}",
                    wait=max(0.0, deadline - time.monotonic()),
                )
            self._applied(key, value)

        async with anyio.create_task_group() as tg:
            for key, value in changes.items():
                tg.start_soon(one, key, value)

    def _applied(self, key: str, value: bytes | None) -> None:
        """Apply a change just written to this replica's view at once (read your writes)."""
        view = self.__actorbus_policy__
        if view is not None:
            view.state.apply(key, value)

    async def _change(self, what: str, entry: str, value: bytes | None, /, **args: Any) -> None:
        await self._write(entry, value, who=self._require_admin(), what=what, args=args)
