"""The control client: what ``actor ps|kill|restart|scale|down`` do, from any machine.

Every node supervisor serves an actor named ``node.<node>`` (:mod:`actorbus.actors.node`);
this module finds them in the registry and calls them, signed with the caller's key, so
the same policy (admins only) and audit apply as to any call. It imports no process
management: a laptop that only controls nodes never starts one.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

from ..bus import ActorError, BadRequest, NoSuchActor, NotFound, Unavailable
from ..bus.jetstream import when_ready
from ..bus.subjects import NODE_PREFIX
from .client import Client
from .specs import ActorSpec, ReplicaStatus

__all__ = ["CONTROL_TIMEOUT", "Control", "node_actor"]

CONTROL_TIMEOUT = 600.0
"""Seconds a control call may take (a rolling restart of many replicas is slow)."""


def node_actor(node: str) -> str:
    """The name of node ``node``'s supervisor actor."""
    return NODE_PREFIX + node


def _statuses(value: Any) -> list[ReplicaStatus]:
    return msgspec.convert(value, list[ReplicaStatus])


class Control:
    """Control calls to the node supervisors on ``client``'s NATS."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.errors: dict[str, ActorError] = {}
        """What nodes that did not answer the last :meth:`ps` said (by node)."""

    async def nodes(self) -> list[str]:
        """The names of the nodes whose supervisors are up (waiting up to 10 s while the
        registry's JetStream elects a leader: a NATS node of a cluster just lost)."""
        entries = await when_ready(self.client.entries, "reading the registry", wait=10.0)
        return sorted(
            {e.name[len(NODE_PREFIX) :] for e in entries if e.name.startswith(NODE_PREFIX)}
        )

    async def _call(self, node: str, fn: str, *args: Any) -> Any:
        try:
            return await self.client.request(
                node_actor(node), fn, list(args), timeout=CONTROL_TIMEOUT
            )
        except NoSuchActor:
            raise NoSuchActor(
                f"no node named {node!r} (nodes: {', '.join(await self.nodes())})"
            ) from None

    async def ps(self, node: str | None = None) -> list[ReplicaStatus]:
        """Every replica slot of every node (or of ``node``); nodes asked together. Nodes
        that fail are in :attr:`errors`; if all of them fail, the first error is raised."""
        nodes = [node] if node else await self.nodes()
        results: dict[str, list[ReplicaStatus]] = {}
        self.errors = {}

        async def one(name: str) -> None:
            try:
                results[name] = _statuses(await self._call(name, "ps"))
            except ActorError as exc:
                self.errors[name] = exc

        async with anyio.create_task_group() as tg:
            for name in nodes:
                tg.start_soon(one, name)
        if nodes and not results:
            # A node gone since the registry last heard of it is no responders (503); any
            # other answer (a 403, say) is the one to show.
            errors = list(self.errors.values())
            raise next((e for e in errors if e.status != Unavailable.status), errors[0])
        return [status for name in nodes for status in results.get(name, [])]

    async def _nodes_running(self, name: str) -> list[str]:
        nodes = sorted({s.node for s in await self.ps() if s.actor == name})
        if nodes:
            return nodes
        # A node that is gone is no responders (503); one that answered otherwise (a 403,
        # a timeout) may well run it, and that is the error to show.
        for node, exc in sorted(self.errors.items()):
            if exc.status != Unavailable.status:
                raise type(exc)(f"no node that answered runs {name!r}; {node}: {exc.message}")
        await self.client.check_named(name)  # a typo: "did you mean ...?"
        raise NotFound(f"no node runs {name!r}")

    async def up(self, node: str, spec: ActorSpec) -> list[ReplicaStatus]:
        """Start ``spec`` on ``node``; returns once its replicas answer."""
        return _statuses(await self._call(node, "up", msgspec.to_builtins(spec)))

    async def kill(self, name: str) -> dict[str, int]:
        """Stop ``name`` on every node that runs it; replicas stopped, by node."""
        return {
            node: await self._call(node, "kill", name) for node in await self._nodes_running(name)
        }

    async def restart(self, name: str) -> list[ReplicaStatus]:
        """Restart ``name`` one replica at a time, node after node."""
        statuses: list[ReplicaStatus] = []
        for node in await self._nodes_running(name):
            statuses += _statuses(await self._call(node, "restart", name))
        return statuses

    async def scale(self, name: str, replicas: int, node: str | None = None) -> list[ReplicaStatus]:
        """Run ``replicas`` replicas of ``name`` on ``node`` (needed when several run it)."""
        if node is None:
            nodes = await self._nodes_running(name)
            if len(nodes) > 1:
                raise BadRequest(f"{name!r} runs on nodes {', '.join(nodes)}: say which (--node)")
            node = nodes[0]
        return _statuses(await self._call(node, "scale", name, replicas))

    async def down(self, node: str) -> None:
        """Stop node ``node``: its actors drain, then its supervisor exits."""
        await self._call(node, "down")
