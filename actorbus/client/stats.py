"""Every replica's figures, as it tells them on ``$SRV.STATS`` (PROTOCOL.md §7), asked of
the whole bus at once: what `actor top` shows. An answer counts only from a replica whose
signed registry record (in the answer's metadata) the caller's :class:`Vouching` counts,
as ``$SRV.INFO`` answers do in discovery."""

from __future__ import annotations

from typing import Any

import msgspec

from ..bus import NATS
from ..bus.requests import gather
from ..bus.subjects import service_subject
from ..bus.wire import UNDECODABLE
from .discovery import vouched
from .registry import RegistryEntry, Vouching

__all__ = ["EndpointFigures", "ReplicaFigures", "replica_figures"]

_WAIT = 0.5
_QUIET = 0.05
_LIMIT = 4096


class EndpointFigures(msgspec.Struct):
    """One function's counts on one replica (``data``: :mod:`actorbus.host.stats`)."""

    name: str
    num_requests: int = 0
    num_errors: int = 0
    data: dict[str, Any] | None = None


class _Answer(msgspec.Struct):
    id: str
    metadata: dict[str, str] | None = None
    endpoints: list[EndpointFigures] = msgspec.field(default_factory=list)


class ReplicaFigures(msgspec.Struct):
    """A replica (its registry entry) and its functions' counts."""

    entry: RegistryEntry
    endpoints: list[EndpointFigures]


_answer = msgspec.json.Decoder(_Answer)


async def replica_figures(
    nc: NATS, vouching: Vouching, name: str | None = None
) -> list[ReplicaFigures]:
    """The figures of every replica on the bus (of ``name``'s only, if given) that answer
    within half a second, by actor, node and replica."""
    subject = service_subject("STATS", name) if name else "$SRV.STATS"
    found = []
    for msg in await gather(nc, subject, b"", wait=_WAIT, limit=_LIMIT, quiet=_QUIET):
        try:
            answer = _answer.decode(msg.data)
        except UNDECODABLE:
            continue
        metadata = answer.metadata or {}
        actor = metadata.get("actor", "")
        if not actor or (name and actor != name):
            continue
        if (entry := vouched(answer.id, metadata, vouching)) is not None:
            found.append(ReplicaFigures(entry, answer.endpoints))
    return sorted(found, key=lambda f: (f.entry.name, f.entry.node, f.entry.replica))
