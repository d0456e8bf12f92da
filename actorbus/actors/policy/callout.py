"""The auth callout: the NATS server asks the policy actor about every connection that is
not one of its own config's users, and the answer is that connection's permissions.

- No credentials: a stranger. It may call what the ``public`` role may call (compiled
  into subjects, :func:`~actorbus.bus.rights.call_subjects`), ask ``$SRV``, and hear its
  own replies; nothing else (:func:`~actorbus.bus.rights.stranger`). A leaf connection
  without credentials is refused.
- An nkey (the server's nonce signed by an actorbus key): a caller with that key's role,
  an admin, or, with a valid hosting ticket as its token, a replica of the ticket's name
  (:mod:`actorbus.bus.tickets`; the name is claimed on first use, :mod:`.bindings`).
- An nkey and an sr25519 caller's vouch for it as its token (:mod:`actorbus.bus.vouch`):
  that caller, with its role, or an admin.

Role-compiled permissions expire after ``auth_ttl`` seconds (the client reconnects and
is asked about again), so a role's change reaches the server's check; replicas decide
every call on the live policy meanwhile. A replica's expire after about ``replica_ttl``
seconds, a leaf node's after about ``leaf_ttl``: a removed host's replicas and leaf are
cut off then (their next connection is refused). A
refusal is an ``Authorization Violation`` for the client, and a line (throttled) in this
actor's log saying why.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import re
import time

import anyio
import anyio.abc

from ...bus import (
    ActorError,
    BadRequest,
    Forbidden,
    Keypair,
    LogThrottle,
    Msg,
    Unauthorized,
    printable,
    publish,
)
from ...bus.keys import public_key_to_address, verify_raw
from ...bus.natsjwt import AuthRequest, Permissions, authorization_response, decode_request
from ...bus.nkeys import decode_nkey
from ...bus.rights import (
    AUTH_SUBJECT,
    admin,
    call_subjects,
    caller,
    callout_issuer,
    leaf,
    replica,
    stranger,
)
from ...bus.subjects import queue_group
from ...bus.vouch import is_vouch, read_vouch
from ...client import RegistryEntry
from ...host.policy import DEFAULT_WHITELIST, PUBLIC, Role
from .bindings import Bindings

__all__ = ["AuthCallout"]

log = logging.getLogger("actorbus.policy")

_CONCURRENCY = 64
"""Connections asked about at once; more wait (the server times them out)."""
_ACTORS_SECONDS = 5.0
_LEAF = "Leafnode"
_NODE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""How long the registry's view of each actor's own whitelist is reused."""


class AuthCallout(Bindings):
    """Answers ``$SYS.REQ.USER.AUTH`` (in the policy actor's replicas, a queue group)."""

    _registry_view: tuple[float, list[RegistryEntry]] = (0.0, [])

    async def on_run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        issuer = callout_issuer(self.key)
        throttle = LogThrottle(log)
        slots = anyio.Semaphore(_CONCURRENCY)
        sub = await self.nc.subscribe(AUTH_SUBJECT, queue=queue_group(self.name or "policy"))
        await self.nc.flush()
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keeper.run)  # beside the callout: both live as long
                async for msg in sub.messages:
                    await slots.acquire()
                    tg.start_soon(self._answer, issuer, msg, slots, throttle)
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()

    async def _answer(
        self, issuer: Keypair, msg: Msg, slots: anyio.Semaphore, throttle: LogThrottle
    ) -> None:
        try:
            try:
                request = decode_request(msg.data)
            except ActorError:
                return  # not the server's question: no answer
            try:
                permissions, name, expires = await self._admit(request)
                answer = authorization_response(
                    issuer, request, permissions=permissions, name=name, expires=expires
                )
            except ActorError as exc:
                throttle.log(
                    logging.INFO,
                    type(exc).__name__,
                    "refused a NATS connection from %s: %s",
                    printable(request.client_info.host, 64),
                    printable(exc.message, 200),
                )
                answer = authorization_response(issuer, request, error=exc.message[:200])
            if msg.reply:
                await publish(self.nc, msg.reply, answer)
        except ActorError as exc:
            throttle.log(logging.WARNING, "answer", "auth callout answer not sent: %s", exc)
        finally:
            slots.release()

    async def _admit(self, request: AuthRequest) -> tuple[Permissions, str, int]:
        """The permissions, the name and the expiry (Unix seconds, 0: none) of the user
        this connection becomes; raises an :class:`ActorError` to refuse it."""
        options, settings, state = request.connect_opts, self.settings, self.state
        expires = int(time.time() + settings.auth_ttl)
        if not options.nkey and request.client_info.kind == _LEAF:
            # A leaf connection carries whatever its side subscribes to: no stranger's.
            raise Unauthorized("a leaf node joins under its node's key")
        if not options.nkey:
            if options.auth_token:
                raise BadRequest("a token comes with an nkey (the key the token is for)")
            return stranger(await self._calls(PUBLIC)), "stranger", expires
        public_key = decode_nkey(options.nkey)
        verify_raw(public_key, request.client_info.nonce.encode(), _signature(options.sig))
        address = public_key_to_address(public_key)
        if request.client_info.kind == _LEAF:
            if address not in state.admins and address not in state.hosts:
                raise Forbidden(
                    f"{address} may not join this bus: an admin runs "
                    f"`actor policy host add {address}`"
                )
            node = _NODE_NAME.fullmatch(request.client_info.name)
            if node is None:
                raise BadRequest("a leaf node names itself after its node (server_name)")
            until = int(time.time() + settings.leaf_ttl * random.uniform(0.75, 1.0))
            return leaf(node.group(0), settings), f"leaf {node.group(0)}", until
        if options.auth_token and is_vouch(options.auth_token):
            address, public_key = read_vouch(options.auth_token, address)
        elif options.auth_token:
            ticket = self._check_ticket(options.auth_token, address)
            await self._claim(ticket.name, ticket.role, address, ticket.host)
            await self._provide(ticket.name, ticket.role)
            # Each replica's at a moment of its own: they do not all reconnect at once.
            until = int(time.time() + settings.replica_ttl * random.uniform(0.75, 1.0))
            return replica(ticket.name, public_key, ticket.role, settings), ticket.name, until
        if address in state.admins:
            return admin(public_key), address, expires
        calls = await self._calls(state.role_of(address))
        # A host's own connection reads the registry, as its replicas do (its `actor up`
        # waits there for what it started); any other caller's does not.
        return caller(public_key, calls, host=address in state.hosts), address, expires

    async def _calls(self, role_name: str) -> list[str]:
        """The call subjects of role ``role_name``: its allow patterns, the discovery
        whitelist of every actor, and each running actor's own additions to it."""
        stamp, entries = self._registry_view
        if time.monotonic() - stamp > _ACTORS_SECONDS:
            try:
                entries = await self.client.entries()
            except ActorError as exc:
                log.debug("auth callout: registry unreadable (%s): last view kept", exc)
            self._registry_view = (time.monotonic(), entries)
        role = self.state.roles.get(role_name) or Role()
        own = [f"{e.name}/{fn}" for e in entries for fn in e.allow_fns]
        return call_subjects([*role.allow, *own], DEFAULT_WHITELIST)


def _signature(text: str) -> bytes:
    """The nonce signature of a CONNECT: base64, standard (nats-py) or URL-safe without
    padding (nats.go)."""
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BadRequest("malformed nkey signature") from None
