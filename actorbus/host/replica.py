"""Hosting one actor replica: :func:`serve`.

Lifetimes nest: connection -> registry -> replay guard -> actor -> task group (reader,
workers, ``$SRV`` responder, heartbeat, the actor's own :meth:`~Actor.on_run`). On exit
the replica stops taking calls, finishes the ones it accepted (up to ``drain_timeout``),
answers 503 to any it could not finish, then tears the rest down (``on_run`` last, so a
server of its own can finish its requests while the connection is still up). A replica
that cannot go on (its sync handler threads all stuck) sets :attr:`Host.failed`; whoever
runs it should leave the block and exit.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from importlib.metadata import PackageNotFoundError, version

import anyio
import msgspec

from ..bus import NATS, ActorError, Keypair, Keystore, Unavailable, connect, token_keypair
from ..bus.pins import policy_seen
from ..bus.settings import Settings, node_name
from ..bus.subjects import check_name, queue_group, serve_subject
from ..bus.tickets import host_ticket
from ..client.client import Client
from ..client.registry import Registry, RegistryEntry, signed_entry
from .actor import Actor, actor_name, collect_functions
from .binding import NameBinding, binding_key
from .micro import ServiceIdentity, serve_micro
from .pipeline import Pipeline
from .policy_view import PolicyView
from .quotas import Grant, Quotas
from .replay import replay_guard

__all__ = ["Host", "host_key", "serve"]

log = logging.getLogger("actorbus.host")

try:
    VERSION = version("actorbus")
except PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0"


class Host:
    """A running replica: what :func:`serve` yields."""

    def __init__(self, actor: Actor, entry: RegistryEntry, pipeline: Pipeline) -> None:
        self.actor = actor
        self.entry = entry
        self.pipeline = pipeline

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def address(self) -> str:
        return self.entry.address

    @property
    def instance(self) -> str:
        return self.entry.instance

    @property
    def failed(self) -> anyio.Event:
        """Set when this replica cannot go on; :attr:`failure` says why."""
        return self.pipeline.failed

    @property
    def failure(self) -> str:
        return self.pipeline.failure


@asynccontextmanager
async def serve(
    actor: Actor,
    *,
    name: str | None = None,
    key: Keypair | None = None,
    settings: Settings | None = None,
    nc: NATS | None = None,
) -> AsyncIterator[Host]:
    """Serve ``actor`` as one replica of ``name`` until the block exits.

    Started means ready: on entry the replica has loaded the replay window, registered,
    subscribed and flushed, so a call sent right after is answered. ``key`` defaults to
    the keystore key named after the actor (created on first use). Raises
    :class:`Unavailable` if NATS cannot be reached.
    """
    settings = settings or Settings.from_env()
    name = check_name(actor_name(type(actor), name))
    key = key or Keystore(settings.home).load(name, create=True)
    actor.name = name
    actor.address = key.address
    functions = collect_functions(actor)
    actor.__actorbus_functions__ = functions
    instance = secrets.token_hex(8)

    ticket = partial(host_ticket, host_key(settings), name, actor.rights, key.address)
    async with AsyncExitStack() as stack:
        if nc is None:
            nc = await stack.enter_async_context(
                connect(settings.url, name=f"actor {name} {instance}", key=key, token=ticket)
            )
        policy = PolicyView(
            nc, settings, keep=frozenset({binding_key(name)}), lazy=not actor.whole_policy
        )
        registration = _Registration(nc, settings, name, key)
        await registration.open()
        guard = await stack.enter_async_context(
            replay_guard(
                nc,
                name,
                settings.max_skew,
                key,
                instance,
                replicas=settings.js_replicas,
                make=not settings.join and not policy_seen(settings),
            )
        )
        actor.__actorbus_policy__ = policy
        client = await stack.enter_async_context(Client(key, settings=settings, nc=nc))
        actor.client, actor.key, actor.settings, actor.nc = client, key, settings, nc
        quotas = (
            Quotas(
                partial(_lease, client, settings.policy),
                partial(_release, client, settings.policy),
            )
            if actor.quotas
            else None
        )
        pipeline = Pipeline(
            nc=nc,
            name=name,
            key=key,
            actor=actor,
            functions=functions,
            guard=guard,
            settings=settings,
            policy=policy,
            quotas=quotas,
        )
        entry = RegistryEntry(
            name=name,
            address=key.address,
            fns=sorted(functions),
            node=node_name(settings),
            pid=os.getpid(),
            instance=instance,
            started=time.time(),
            version=VERSION,
            allow_fns=sorted(actor.allow_fns),
            deny_fns=sorted(actor.deny_fns),
            replica=settings.replica,
            idempotent=sorted(fn for fn, f in functions.items() if f.options.idempotent),
            streams=sorted(fn for fn, f in functions.items() if f.is_stream),
        )
        await actor.on_start()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(policy.run)
                binding = NameBinding(client, policy, name, ticket)
                registration.binding = binding
                if policy.enforced:
                    await binding.claim()
                identity = ServiceIdentity(
                    actor=name,
                    id=instance,
                    version=VERSION,
                    description=actor.description or type(actor).__doc__ or "",
                    metadata={"actor": name, "address": key.address, "node": entry.node},
                    started=dt.datetime.now(dt.UTC),
                )
                registration.show(identity, entry)
                for _ in range(settings.max_in_flight):
                    tg.start_soon(pipeline.work)
                tg.start_soon(pipeline.sweep)
                await tg.start(
                    serve_micro, nc, identity, functions, pipeline.stats, settings.reply_prefixes
                )
                # The accept stages run in the subscription's callback task: they are quick,
                # never raise, and hand each call to our workers. nats-py's message iterator
                # would do the same reading but creates two tasks and an asyncio.wait per
                # message, which cost a measured ~15% of throughput. The buffer in front of
                # it is bounded in messages and body bytes (nats-py does not count header
                # bytes); past max_queue messages behind, the pipeline sheds (503,
                # unverified) long before nats-py would drop requests unanswered.
                sub = await nc.subscribe(
                    serve_subject(name),
                    queue=queue_group(name),
                    cb=pipeline.accept,
                    pending_msgs_limit=settings.max_queue * 8,
                    pending_bytes_limit=settings.max_pending_bytes,
                )
                pipeline.sub = sub
                await nc.flush()
                await registration.put(entry)
                tg.start_soon(_heartbeat, registration, entry, pipeline)
                tg.start_soon(
                    binding.keep, lambda: registration.period, partial(registration.put, entry)
                )
                try:
                    await tg.start(actor.on_run)
                except BaseException:  # never ready: leave no registry entry behind
                    with anyio.CancelScope(shield=True):
                        await _drain(pipeline, sub, registration, entry, settings.drain_timeout)
                    raise
                log.info("%s ready: %d functions, address %s", name, len(functions), key.address)
                try:
                    yield Host(actor, entry, pipeline)
                finally:
                    with anyio.CancelScope(shield=True):
                        await _drain(pipeline, sub, registration, entry, settings.drain_timeout)
                        if quotas is not None:
                            await _return_leases(client, settings.policy, quotas)
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(settings.drain_timeout):
                await actor.on_stop()


class _Registration:
    """This replica's registry entry. Without JetStream (its quorum lost) a replica still
    starts and serves: callers find it through ``$SRV.INFO`` until a heartbeat manages to
    open the registry and write the entry (warned about once, then when it is back)."""

    def __init__(self, nc: NATS, settings: Settings, name: str, key: Keypair) -> None:
        self._nc = nc
        self._settings = settings
        self._name = name
        self._key = key
        self.binding: NameBinding | None = None
        self.registry: Registry | None = None
        self._failing = False
        self._identity: ServiceIdentity | None = None
        self._shown: str | None = None
        """The binding in the record the replica shows on ``$SRV``."""

    def _current(self, entry: RegistryEntry) -> RegistryEntry:
        """``entry`` with the name's binding as the policy holds it now."""
        binding = self.binding.record if self.binding else ""
        return msgspec.structs.replace(entry, binding=binding)

    def record(self, entry: RegistryEntry) -> bytes:
        """``entry`` as a signed registry record (for ``$SRV.INFO``, whose answers are
        checked as registry entries are)."""
        return signed_entry(self._current(entry), self._key)

    def show(self, identity: ServiceIdentity, entry: RegistryEntry) -> None:
        """Show ``entry`` on ``$SRV`` as ``identity``'s record, and again whenever the
        name's binding is not the one shown (each put): a replica may be bound after it
        started (its policy was not loaded yet, or could not be asked), and without
        JetStream callers that trust the policy find it only there, and count it only
        with the binding."""
        self._identity = identity
        binding = self.binding.record if self.binding else ""
        if binding != self._shown:
            record = self.record(entry).decode()
            identity.metadata = {**identity.metadata, "record": record}
            self._shown = binding

    @property
    def period(self) -> float:
        """Seconds between heartbeats: a third of the entries' TTL."""
        return (self.registry.ttl if self.registry else self._settings.registry_ttl) / 3

    async def open(self) -> None:
        settings = self._settings
        try:
            self.registry = await Registry.open(self._nc, settings)
        except Unavailable as exc:
            self._failed(exc)

    async def put(self, entry: RegistryEntry) -> None:
        if self._identity is not None:
            self.show(self._identity, entry)
        if self.registry is None:
            await self.open()
        if self.registry is None:
            return
        try:
            await self.registry.put(self._current(entry), self._key)
        except Unavailable as exc:
            self._failed(exc)
            return
        if self._failing:
            log.warning("%s: in the registry again", entry.name)
            self._failing = False

    def _failed(self, exc: Unavailable) -> None:
        if not self._failing:
            log.warning(
                "%s: not in the registry (%s): callers find this replica through "
                "$SRV.INFO; trying again every heartbeat",
                self._name,
                exc.message,
            )
            self._failing = True


async def _heartbeat(registration: _Registration, entry: RegistryEntry, pipeline: Pipeline) -> None:
    while True:
        await anyio.sleep(registration.period)
        calls = sum(s.num_requests for s in pipeline.stats.values())
        await registration.put(msgspec.structs.replace(entry, calls=calls))


async def _drain(
    pipeline: Pipeline,
    sub: object,
    registration: _Registration,
    entry: RegistryEntry,
    timeout: float,
) -> None:
    """Leave the registry and the queue group, serve what was already on its way, finish
    the accepted calls. A rolling restart loses no call this way: the server stops routing
    here before the replica stops accepting."""
    with anyio.move_on_after(2):
        try:
            if registration.registry is not None:
                await registration.registry.remove(entry)
        except Unavailable as exc:
            log.warning("%s: could not leave the registry: %s", entry.name, exc)
    with anyio.move_on_after(timeout):
        await sub.drain()  # type: ignore[attr-defined]  # unsubscribe, then serve the rest
    pipeline.accepting = False
    with anyio.move_on_after(timeout) as scope:
        await pipeline.idle.wait()
    if scope.cancelled_caught:
        log.warning(
            "%s: %d calls still running after %gs; answering them 503 and abandoning them",
            entry.name,
            pipeline.in_flight,
            timeout,
        )
        with anyio.move_on_after(2):
            await pipeline.abandon("shutting down: the call could not finish in time")
    pipeline.threads.close()
    pipeline.replies.throttle.flush(force=True)


def host_key(settings: Settings) -> Keypair:
    """The key that signs this home's hosting tickets (the home's own, unless told)."""
    if settings.host_token:
        return token_keypair(settings.host_token)
    keys = Keystore(settings.home)
    if settings.host_key:
        return keys.load(settings.host_key)
    return keys.owner(settings.key)


async def _lease(client: Client, policy: str, key: str, want: int, window: int) -> Grant:
    """Borrow up to ``want`` calls of ``key``'s budget for ``window`` from the policy
    actor."""
    grant: Grant = msgspec.convert(
        await client.request(policy, "lease", [key, want, window], timeout=4.0), Grant
    )
    return grant


async def _release(client: Client, policy: str, key: str, window: int, count: int) -> None:
    """Hand ``count`` unused calls of ``key``'s lease for ``window`` back to the policy actor."""
    await client.request(policy, "release", [key, window, count], timeout=1.0)


async def _return_leases(client: Client, policy: str, quotas: Quotas) -> None:
    """Hand back what this replica borrowed and did not use (best effort, 2 s)."""
    with anyio.move_on_after(2):
        for key, window, count in quotas.unused():
            try:
                await _release(client, policy, key, window, count)
            except ActorError as exc:
                log.debug("could not return a lease for %s: %s", key, exc)
                return
