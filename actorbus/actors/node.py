"""A node: the supervisor of one machine's actors, controlled over NATS as an actor.

:func:`run_node` is what ``actor up`` runs (in the foreground, or detached). Its lifetimes
nest: this home's lock -> the NATS server (an embedded one if none answers) -> a
connection -> the log stream and shipper -> the replica slots (:mod:`actorbus.node.supervisor`)
-> the control actor ``node.<node>``. Unwinding runs in reverse: the control actor
stops, the gateway stops taking requests, the user's actors drain, then the policy actor,
the last log lines
go out, the connection drains, and the embedded server stops last.

:class:`NodeActor` is an actor like any other, served by the same pipeline: ``ps``,
``up``, ``kill``, ``restart``, ``scale`` and ``down`` are for policy admins only (for
this home's own key while no policy runs), and each change is audited.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import anyio.abc
import msgspec

from ..bus import (
    NATS,
    ActorError,
    BadRequest,
    Forbidden,
    Keypair,
    Keystore,
    Unavailable,
    connect,
)
from ..bus.jetstream import strangers_use_jetstream, when_ready
from ..bus.rights import NODE
from ..bus.settings import Settings, node_name
from ..bus.subjects import NODE_PREFIX, check_name
from ..bus.tickets import host_ticket
from ..client import Client
from ..client.control import CONTROL_TIMEOUT, node_actor
from ..client.specs import ActorSpec, ReplicaStatus, spec_record
from ..host import Actor, current_call, endpoint, serve
from ..node.audit import ensure_audit, record
from ..node.logs import LogShipper, ensure_logs
from ..node.metrics import serve_metrics
from ..node.slots import EventFn, OutputFn, SupervisorError
from ..node.supervisor import Node, NodeInfo, claim_node, nats_server_for, supervised

__all__ = ["JOBS_TARGET", "POLICY_TARGET", "NodeActor", "run_node"]

log = logging.getLogger("actorbus.node")

POLICY_TARGET = "actorbus.actors.policy:Policy"
JOBS_TARGET = "actorbus.actors.jobs:Jobs"

_CONTROL = frozenset({"ps", "up", "kill", "restart", "scale", "down"})


class NodeActor(Actor):
    """Controls the actors of one node (admins only; every change is audited)."""

    # Decided here, not by the policy's roles: this home's own key may control its node
    # whoever runs the policy on this NATS (:meth:`_authorize`).
    allow_fns = _CONTROL
    quotas = False
    sessions = False  # every control request is signed by the admin who sent it
    rights = NODE  # its name is node.<node>, which only a supervisor's ticket may claim

    def __init__(self, node: Node, owner: Keypair, stop: anyio.Event) -> None:
        self._node = node
        self._owner = owner
        self.owner = owner.address  # its home controls it whatever the policy (or none)
        self._stop = stop

    async def on_start(self) -> None:
        settings = self.settings
        await when_ready(
            lambda: ensure_audit(self.nc, replicas=settings.js_replicas),
            "the audit stream",
            wait=settings.start_wait,
        )

    def _authorize(self) -> str:
        """The caller, if this home's own key (whoever runs the policy on this NATS) or a
        policy admin."""
        caller = current_call().caller
        policy = self.__actorbus_policy__
        if caller == self._owner.address:
            return caller
        if policy is not None and policy.enforced and caller in policy.state.admins:
            return caller
        raise Forbidden("only a policy admin or the node's own home may control a node")

    async def _audit(self, who: str, what: str, **args: Any) -> None:
        """Record a control action in the audit trail; without JetStream (its quorum lost,
        a leaf cut from its hub) the action still happens and the log says it went
        unrecorded."""
        try:
            await record(self.nc, self.name or "node", self.key, who, what, args)
        except Unavailable as exc:
            log.warning("%s by %s is not in the audit trail: %s", what, who, exc.message)

    async def ps(self) -> list[ReplicaStatus]:
        """Every replica slot on this node: state, pid, uptime, restarts, calls, memory."""
        self._authorize()
        return await self._node.ps()

    @endpoint(timeout=CONTROL_TIMEOUT)
    async def up(self, spec: ActorSpec) -> list[ReplicaStatus]:
        """Start ``spec`` here; returns once its replicas answer."""
        who = self._authorize()
        check_name(spec.name)
        if spec.name.startswith(NODE_PREFIX):
            raise BadRequest(f"names starting with {NODE_PREFIX!r} are the supervisors'")
        if spec.tier in ("system", "jobs"):
            raise BadRequest(f"{spec.tier} actors are started by the node itself")
        statuses = await self._node.add(spec)
        await self._audit(who, "up", spec=spec_record(spec))
        if spec.tier == "front":
            owner = Client(self._owner, settings=self.settings, nc=self.nc)
            await trust_gateway(owner, self.settings, spec.name, self._node.on_event)
        return statuses

    @endpoint(timeout=CONTROL_TIMEOUT)
    async def kill(self, name: str) -> int:
        """Stop every replica of ``name`` here (each drains); returns how many."""
        who = self._authorize()
        stopped = await self._node.kill(name)
        await self._audit(who, "kill", name=name, replicas=stopped)
        return stopped

    @endpoint(timeout=CONTROL_TIMEOUT)
    async def restart(self, name: str) -> list[ReplicaStatus]:
        """Restart ``name``'s replicas one at a time, each new one answering first."""
        who = self._authorize()
        statuses = await self._node.restart(name)
        await self._audit(who, "restart", name=name)
        return statuses

    @endpoint(timeout=CONTROL_TIMEOUT)
    async def scale(self, name: str, replicas: int) -> list[ReplicaStatus]:
        """Run ``replicas`` replicas of ``name`` here."""
        who = self._authorize()
        statuses = await self._node.scale(name, replicas)
        await self._audit(who, "scale", name=name, replicas=replicas)
        return statuses

    async def down(self) -> str:
        """Stop this node: its actors drain, then the supervisor exits."""
        who = self._authorize()
        await self._audit(who, "down")
        self._stop.set()
        return f"node {self._node.name} is stopping"


async def run_node(
    settings: Settings,
    specs: list[ActorSpec],
    *,
    stop: anyio.Event,
    on_output: OutputFn,
    on_event: EventFn,
    on_ready: Callable[[NodeInfo, Node], None],
) -> None:
    """Run this node's supervisor with ``specs`` until ``stop`` is set (a signal, or a
    ``down`` request), then stop everything in order.

    Raises :class:`SupervisorError` if another supervisor runs for this home or an actor
    does not start (then nothing is left running), :class:`Unavailable` if NATS cannot be
    reached.
    """
    name = node_name(settings)
    owner = Keystore(settings.home).owner(settings.key)
    with claim_node(settings.home) as describe:
        async with nats_server_for(settings) as server:
            url = server.url if server else settings.url
            here = msgspec.structs.replace(settings, nats_url=url, node=name)
            info = NodeInfo(
                os.getpid(),
                name,
                url,
                time.time(),
                server.pid if server else None,
                nats_monitor=server.monitor_url if server else "",
            )
            describe(info)
            control = node_actor(name)
            control_key = Keystore(settings.home).load(control, create=True)
            ticket = partial(host_ticket, owner, control, NODE, owner.address)
            if server is None and not settings.join and await strangers_use_jetstream(url):
                on_event(
                    f"anyone who reaches NATS at {url} can change the policy (a connection "
                    "without credentials may use JetStream there): give strangers calls "
                    'only, as README\'s "A NATS of your own" shows (`actor nats config`)',
                    True,
                )
            async with connect(url, name=f"actorbus node {name}", key=owner, token=ticket) as nc:
                if server is not None:  # else the policy actor makes it (a host may not)
                    await when_ready(
                        lambda: ensure_logs(nc, here), "the logs stream", wait=here.start_wait
                    )
                shipper = LogShipper(nc, name, control_key)

                def output(actor: str, replica: int, pid: int, line: str) -> None:
                    shipper.ship(actor, replica, pid, line)
                    on_output(actor, replica, pid, line)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(shipper.run)
                    try:
                        async with (
                            supervised(
                                name=name,
                                settings=here,
                                url=url,
                                nc=nc,
                                on_output=output,
                                on_event=on_event,
                            ) as node,
                            anyio.create_task_group() as served,
                        ):
                            actor = NodeActor(node, owner, stop)
                            metrics = await _metrics(served, node, here, on_event)
                            info = msgspec.structs.replace(info, metrics=metrics)
                            async with serve(
                                actor, name=control, key=control_key, settings=here, nc=nc
                            ):
                                await _start(
                                    node, here, specs, nc, owner, control_key, on_event, info
                                )
                                describe(msgspec.structs.replace(info, ready=True))
                                on_ready(info, node)
                                await stop.wait()
                            served.cancel_scope.cancel()  # the metrics endpoint
                    finally:
                        shipper.close()  # the last lines go out before the connection drains


async def _metrics(
    tg: anyio.abc.TaskGroup, node: Node, settings: Settings, on_event: EventFn
) -> str:
    """Serve the node's Prometheus metrics in ``tg``; their URL ('' if they cannot be)."""
    try:
        url: str = await tg.start(serve_metrics, node, settings.metrics_host, settings.metrics_port)
    except Unavailable as exc:
        on_event(f"no metrics: {exc.message}", True)
        return ""
    return url


async def _start(
    node: Node,
    settings: Settings,
    specs: list[ActorSpec],
    nc: NATS,
    owner: Keypair,
    control_key: Keypair,
    on_event: EventFn,
    info: NodeInfo,
) -> None:
    """The policy actor and the jobs actor if none runs on this NATS, then ``specs`` in
    order, gateways (tier ``front``) last, once the actors behind them answer. Each start
    is recorded in the audit trail as made by this home's key, as an ``up`` request would
    be (signed by the node's control actor, ``control_key``). A gateway that cannot start
    (its port taken) is reported, not fatal.

    Registry entries of this node made before it started are its previous run's (killed
    -9, or its machine rebooted): they count for nothing here, and are deleted."""
    async with Client(owner, settings=settings, nc=nc) as client:
        entries = await client.entries()
        earlier = [e for e in entries if e.node == node.name and e.started < info.started]
        node.forget(earlier)
        running = {e.name for e in entries if e not in earlier}
        policy_running = settings.policy in running
        if not policy_running and all(spec.name != settings.policy for spec in specs):
            on_event(
                f"starting the policy actor {settings.policy!r}; if it is new, its first admin "
                f"is key {settings.key!r} ({owner.address})",
                False,
            )
            replicas = settings.policy_replicas or (2 if settings.js_replicas > 1 else 1)
            policy = ActorSpec(POLICY_TARGET, settings.policy, replicas, tier="system")
            specs = [policy, *specs]
        jobs_running = settings.jobs in running
        if not jobs_running and all(spec.name != settings.jobs for spec in specs):
            specs = [*specs, ActorSpec(target=JOBS_TARGET, name=settings.jobs, tier="jobs")]
        for spec in sorted(specs, key=lambda s: (s.tier == "front", s.tier == "jobs")):
            try:
                await node.add(spec)
            except SupervisorError as exc:
                if spec.tier != "front":
                    raise
                on_event(
                    f"the gateway did not start, the node runs without it: {exc.message}", True
                )
                continue
            spec_args = {"spec": spec_record(spec)}
            await record(nc, node_actor(node.name), control_key, owner.address, "up", spec_args)
            if spec.tier == "front":
                await trust_gateway(client, settings, spec.name, on_event)


async def trust_gateway(client: Client, settings: Settings, name: str, on_event: EventFn) -> None:
    """Make the gateway ``name`` a forwarder (it may call on behalf of callers it has
    authenticated: commune bodies), signed by ``client``'s key, an admin's if it can."""
    entries = await client.entries(name)
    if not entries:
        return
    address = entries[0].address
    try:
        await client.call(settings.policy, "add_forwarder", address)
    except ActorError as exc:
        on_event(
            f"gateway {name} is not a forwarder ({exc}): commune-style calls through it are "
            f"refused until an admin runs `actor policy forwarder add {address}`",
            True,
        )
