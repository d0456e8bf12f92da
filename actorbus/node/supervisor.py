"""The node supervisor: what ``actor up`` runs on a machine. Process management lives here
and in :mod:`.slots`; only a node imports them (the control client does not).

A :class:`Node` keeps groups of replica slots (:class:`~.slots.Replica`), one task per
slot in its task group: it adds, kills, scales and restarts them (rolling: one slot at a
time, each new process ready before the old one stops) and stops everything in order
(gateways first, then the user's actors, then the system's such as the policy actor).
One supervisor runs per ``$ACTOR_HOME``: it holds ``node.lock`` for its lifetime and
describes itself in ``node.json``, so a second ``actor up`` joins it instead of starting
a rival.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import msgspec
import psutil

from ..bus import (
    NATS,
    ActorError,
    BadRequest,
    EmbeddedServer,
    Keystore,
    NotFound,
    Unavailable,
    nats_answers,
    request,
)
from ..bus.leaf import leaf_config, wait_joined
from ..bus.server import write_config
from ..bus.settings import Settings, node_name
from ..bus.subjects import service_subject
from ..client.registry import RegistryEntry
from ..client.specs import TIERS, ActorSpec, ReplicaStatus
from .ghosts import forget
from .natsconf import adopt_global_store, server_config, server_limits
from .saved import save
from .slots import EventFn, OutputFn, Replica, ReplicaReady, SupervisorError

__all__ = [
    "Node",
    "NodeInfo",
    "claim_node",
    "nats_server_for",
    "running_node",
    "supervised",
]

_STATS_TIMEOUT = 0.5
_json = msgspec.json.Decoder()


class NodeInfo(msgspec.Struct):
    """``$ACTOR_HOME/node.json``: the running supervisor of this home."""

    pid: int
    node: str
    url: str
    started: float
    embedded: int | None = None
    """The pid of the embedded nats-server it runs (it stops it last), if it runs one."""
    ready: bool = False
    """Whether it has started what it was asked to (those that could start)."""
    metrics: str = ""
    """Where it serves its replicas' Prometheus metrics (a URL), once it does."""
    nats_monitor: str = ""
    """The embedded nats-server's HTTP monitoring endpoint (loopback), if it runs one."""


@contextmanager
def claim_node(home: Path) -> Iterator[Callable[[NodeInfo], None]]:
    """Be this home's supervisor for the block: hold ``node.lock``; yields the function
    that writes ``node.json`` (removed on exit).

    Raises :class:`SupervisorError` if another process holds the lock.
    """
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home / "node.json"
    with open(home / "node.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            running = running_node(home)
            raise SupervisorError(
                f"a supervisor already runs for {home}"
                + (f" (pid {running.pid})" if running else "")
            ) from None

        def describe(info: NodeInfo) -> None:
            path.write_bytes(msgspec.json.encode(info))

        try:
            yield describe
        finally:
            path.unlink(missing_ok=True)


def running_node(home: Path) -> NodeInfo | None:
    """The supervisor running for ``home``, or ``None`` (its lock is free)."""
    lock_path = home / "node.lock"
    if not lock_path.exists():
        return None
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: someone runs
        else:
            return None
    for _ in range(50):  # the holder writes node.json right after taking the lock
        try:
            return msgspec.json.decode((home / "node.json").read_bytes(), type=NodeInfo)
        except (FileNotFoundError, msgspec.DecodeError):
            time.sleep(0.02)
    return None


@asynccontextmanager
async def nats_server_for(settings: Settings) -> AsyncIterator[EmbeddedServer | None]:
    """The NATS to use: with ``settings.join``, an embedded nats-server that is a leaf
    node of that remote NATS (on ``settings.url``, without JetStream of its own), once its
    leaf connection is up; else ``settings.nats_url`` if set; else one already answering
    on 127.0.0.1:``nats_port``; else an embedded ``nats-server -js`` on that port, with
    this home's users and the policy actor's auth callout (unless ``nats_auth`` is off),
    the connection limits (:mod:`.natsconf`) and, only if ``nats_monitor``, a loopback
    monitoring port. An embedded server keeps its files under ``$ACTOR_HOME/nats`` and is
    stopped on exit. Yields it, or ``None``."""
    if settings.join:
        async with _leaf_server(settings) as server:
            yield server
        return
    if settings.nats_url or await nats_answers(settings.url):
        yield None
        return
    config = server_limits(settings)
    if settings.nats_auth:
        keys = Keystore(settings.home)
        owner = keys.owner(settings.key)
        config = server_config(settings, owner, keys.load(settings.policy, create=True))
    path = write_config(settings.home / "nats" / "server.conf", config)
    server = EmbeddedServer(
        settings.home / "nats",
        port=settings.nats_port,
        extra_args=("-c", str(path)),
        monitor=settings.nats_monitor,
    )
    if settings.nats_auth:
        adopt_global_store(server.jetstream_dir)
    async with AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(server)
        except Unavailable as exc:
            if "is taken" not in exc.message:
                raise
            raise Unavailable(
                f"{exc.message}: give this node's NATS another port (`actor up --nats-port "
                "PORT`, or ACTOR_NATS_PORT), or use a NATS you run (`--nats URL`)"
            ) from None
        yield server


def leaf_config_of(settings: Settings) -> Path:
    """Write the config of this node's leaf server (``settings.join``); raises
    :class:`BadRequest` for a bad URL or credentials file."""
    credentials = Path(settings.join_credentials) if settings.join_credentials else None
    path = settings.home / "nats" / "leaf.conf"
    key = Keystore(settings.home).owner(settings.key)
    node = node_name(settings)
    return leaf_config(path, settings.join, credentials, settings.join_domain, node=node, key=key)


@asynccontextmanager
async def _leaf_server(settings: Settings) -> AsyncIterator[EmbeddedServer]:
    url = urlsplit(settings.url)
    if "," in settings.url or url.hostname is None or url.port is None:
        raise BadRequest(f"with --join, ACTOR_NATS_URL is where the leaf listens: {settings.url}")
    if await nats_answers(settings.url):
        raise BadRequest(
            f"a NATS server answers on {settings.url} already; --join runs its own there "
            "(set ACTOR_NATS_URL to a free port, or join without --join)"
        )
    config = leaf_config_of(settings)
    server = EmbeddedServer(
        settings.home / "nats",
        host=url.hostname,
        port=url.port,
        extra_args=("-c", str(config)),
        jetstream=False,
        monitor=True,
    )
    async with server:
        await wait_joined(server, settings.join, wait=settings.start_wait)
        yield server


class _Slot:
    """A replica and the task that keeps it: cancelling ``scope`` stops it."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()


class Node:
    """This machine's actors; use :func:`supervised` to run one."""

    def __init__(
        self,
        *,
        name: str,
        settings: Settings,
        url: str,
        nc: NATS,
        tg: anyio.abc.TaskGroup,
        on_output: OutputFn,
        on_event: EventFn,
    ) -> None:
        self.name = name
        self.settings = settings
        self.nc = nc
        self.on_output = on_output
        self.on_event = on_event
        self._tg = tg
        self._groups: dict[str, list[_Slot]] = {}
        self._specs: dict[str, ActorSpec] = {}
        self._env = {
            "ACTOR_NATS_URL": url,
            "ACTOR_HOME": str(settings.home),
            "ACTOR_NODE": name,
            "ACTOR_LOG_LEVEL": os.environ.get("ACTOR_LOG_LEVEL", "INFO"),
        }

    def specs(self) -> list[ActorSpec]:
        return list(self._specs.values())

    def _live(self, name: str) -> list[_Slot]:
        slots = self._groups.get(name)
        if slots is None:
            raise NotFound(f"{name!r} does not run on node {self.name}")
        return slots

    async def add(self, spec: ActorSpec) -> list[ReplicaStatus]:
        """Start ``spec``'s replicas (together) and return once all answer.

        Raises :class:`BadRequest` if it already runs here (and has not failed), and
        :class:`SupervisorError` if a replica does not start (then none is left running).
        """
        if spec.replicas < 1:
            raise BadRequest("replicas must be at least 1")
        running = self._groups.get(spec.name)
        if running and any(not s.done.is_set() for s in running):
            raise BadRequest(
                f"{spec.name!r} already runs on node {self.name}: use restart or scale"
            )
        self._groups[spec.name] = []
        self._specs[spec.name] = spec
        try:
            await self._grow(spec, range(spec.replicas))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop(self._groups.pop(spec.name, []))
                self._specs.pop(spec.name, None)
            raise
        self._save()
        return await self.ps(spec.name)

    def forget(self, entries: list[RegistryEntry]) -> None:
        """Delete the registry ``entries`` of replicas that died undrained, in the
        background (:mod:`.ghosts`: each is tried for a few seconds)."""
        for entry in entries:
            self._tg.start_soon(forget, self.settings, entry.name, entry.address, entry.instance)

    def _save(self) -> None:
        """Record what runs now (:mod:`.saved`), for `actor up` to bring back."""
        save(self.settings.home, self.name, list(self._specs.values()))

    async def _grow(self, spec: ActorSpec, indexes: range) -> None:
        failures: list[SupervisorError] = []

        async def start(index: int) -> None:
            try:
                await self._start_slot(spec, index)
            except SupervisorError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as starters:
            for index in indexes:
                starters.start_soon(start, index)
        if failures:
            raise failures[0]

    async def _start_slot(self, spec: ActorSpec, index: int) -> ReplicaReady:
        replica = Replica(
            spec,
            index,
            settings=self.settings,
            env=dict(self._env),
            on_output=self.on_output,
            on_event=self.on_event,
        )
        slot = _Slot(replica)
        self._groups[spec.name].append(slot)
        self._groups[spec.name].sort(key=lambda s: s.replica.index)
        ready: ReplicaReady = await self._tg.start(self._keep, slot)
        return ready

    async def _keep(self, slot: _Slot, *, task_status: anyio.abc.TaskStatus[ReplicaReady]) -> None:
        try:
            with slot.scope:
                await slot.replica.run(task_status=task_status)
        finally:
            slot.done.set()

    async def _stop(self, slots: list[_Slot]) -> None:
        """Stop ``slots`` together (each process drains) and wait until they are gone."""
        for slot in slots:
            slot.scope.cancel()
        for slot in slots:
            await slot.done.wait()

    async def kill(self, name: str) -> int:
        """Stop every replica of ``name`` here; returns how many there were. The policy
        actor (tier ``system``) is refused: the bus's logins and decisions need it, so it
        stops with its node (`actor down`)."""
        slots = self._live(name)
        if (spec := self._specs.get(name)) is not None and spec.tier == "system":
            raise BadRequest(
                f"{name!r} is the policy actor: every login and decision on this NATS needs "
                "it, so it stops with its node (`actor down`); `actor restart` renews it"
            )
        await self._stop(slots)
        del self._groups[name]
        self._specs.pop(name, None)
        self._save()
        return len(slots)

    async def restart(self, name: str) -> list[ReplicaStatus]:
        """Restart ``name``'s replicas one at a time, each new process answering before the
        old one stops; a failed slot is started afresh."""
        for slot in list(self._live(name)):
            if slot.done.is_set():
                self._groups[name].remove(slot)
                await self._start_slot(self._specs[name], slot.replica.index)
            else:
                await slot.replica.restart()
        return await self.ps(name)

    async def scale(self, name: str, replicas: int) -> list[ReplicaStatus]:
        """Run ``replicas`` replicas of ``name`` here (the highest indexes stop first)."""
        if replicas < 1:
            raise BadRequest("replicas must be at least 1 (use kill to stop an actor)")
        slots = self._live(name)
        spec = msgspec.structs.replace(self._specs[name], replicas=replicas)
        self._specs[name] = spec
        self._save()
        if replicas > len(slots):
            top = max(s.replica.index for s in slots) + 1
            await self._grow(spec, range(top, top + replicas - len(slots)))
        elif replicas < len(slots):
            extra = slots[replicas:]
            await self._stop(extra)
            self._groups[name] = slots[:replicas]
        return await self.ps(name)

    def status(self, name: str | None = None) -> list[ReplicaStatus]:
        names = [name] if name else sorted(self._groups)
        return [s.replica.status(self.name) for n in names for s in self._groups.get(n, [])]

    async def ps(self, name: str | None = None) -> list[ReplicaStatus]:
        """Every slot (of ``name``) with its calls (asked of the replica) and memory."""
        return [status for status, _ in await self.measured(name)]

    async def measured(
        self, name: str | None = None
    ) -> list[tuple[ReplicaStatus, list[dict[str, Any]] | None]]:
        """Every slot (of ``name``), measured: its status with calls and memory, and what
        its replica's ``$SRV.STATS`` says of each function (``None``: it did not say)."""
        statuses = self.status(name)
        endpoints: dict[int, list[dict[str, Any]] | None] = {}
        async with anyio.create_task_group() as tg:
            for index, status in enumerate(statuses):
                if status.pid is not None:
                    tg.start_soon(self._measure, status, endpoints, index)
        return [(status, endpoints.get(index)) for index, status in enumerate(statuses)]

    async def _measure(
        self, status: ReplicaStatus, found: dict[int, list[dict[str, Any]] | None], index: int
    ) -> None:
        assert status.pid is not None
        try:
            status.rss = psutil.Process(status.pid).memory_info().rss
        except psutil.Error:
            status.rss = None
        subject = service_subject("STATS", status.actor, status.instance)
        try:
            reply = await request(self.nc, subject, b"", {}, _STATS_TIMEOUT)
            endpoints = _json.decode(reply.data)["endpoints"]
            status.calls = sum(int(e.get("num_requests", 0)) for e in endpoints)
            found[index] = [e for e in endpoints if isinstance(e, dict)]
        except (ActorError, msgspec.DecodeError, KeyError, TypeError, ValueError):
            status.calls = None  # a replica that cannot say: no figure, not an error

    async def stop_all(self) -> None:
        """Tier by tier (see :attr:`ActorSpec.tier`), each tier's replicas together."""
        for tier in TIERS:
            names = [n for n, spec in self._specs.items() if spec.tier == tier]
            await self._stop([slot for n in names for slot in self._groups.get(n, [])])
            for n in names:
                self._groups.pop(n, None)
                self._specs.pop(n, None)


@asynccontextmanager
async def supervised(
    *,
    name: str,
    settings: Settings,
    url: str,
    nc: NATS,
    on_output: OutputFn,
    on_event: EventFn,
) -> AsyncIterator[Node]:
    """A :class:`Node` for the block; on exit every actor it runs stops, in order."""
    async with anyio.create_task_group() as tg:
        node = Node(
            name=name,
            settings=settings,
            url=url,
            nc=nc,
            tg=tg,
            on_output=on_output,
            on_event=on_event,
        )
        try:
            yield node
        finally:
            with anyio.CancelScope(shield=True):
                await node.stop_all()
            tg.cancel_scope.cancel()
