"""What a caller knows of an actor: the addresses its replies may be signed by, and which
of its functions are idempotent; from the registry (JetStream), or, when JetStream cannot
answer (or this connection may not read it: a caller's key), from the replicas themselves
over ``$SRV.INFO`` (core NATS).

Neither source is taken on the bus's word: a registry entry counts only if it is signed
by the address it names and bound to its name by the policy this home trusts
(:class:`~actorbus.client.registry.Vouching`), and a ``$SRV.INFO`` answer only if it
carries such an entry (metadata ``record``).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from ..bus import NATS
from ..bus.requests import gather
from ..bus.subjects import service_subject
from ..bus.wire import UNDECODABLE
from .registry import RegistryEntry, Vouching

__all__ = [
    "Known",
    "ServiceInfo",
    "from_entries",
    "from_service_info",
    "read_service_info",
    "service_infos",
]

_INFO_WAIT = 2.0
"""Seconds to wait for a first ``$SRV.INFO`` answer. With no replica at all the server
says so at once (no responders); with some, waiting for the first is what it takes: a
replica whose loop is busy (a loaded machine, a cluster node just lost) answers late, and
a lookup that gave up at 0.25 s called a reply from it unverifiable (502)."""
_INFO_QUIET = 0.03
"""Once answers come, collecting ends this long after the last one."""
_INFO_LIMIT = 256


class Known(msgspec.Struct, frozen=True):
    """An actor as a caller knows it, until ``expires`` (monotonic seconds)."""

    addresses: frozenset[str]
    idempotent: frozenset[str]
    streams: frozenset[str]
    expires: float
    source: str
    """``registry`` or ``$SRV.INFO``."""


class _Endpoint(msgspec.Struct):
    name: str
    metadata: dict[str, str] | None = None


class _Info(msgspec.Struct):
    """The part of a replica's ``$SRV.INFO`` answer a caller reads."""

    id: str = ""
    metadata: dict[str, str] | None = None
    endpoints: list[_Endpoint] = msgspec.field(default_factory=list)


class ServiceInfo(msgspec.Struct, frozen=True):
    """A replica of an actor as its ``$SRV.INFO`` answer describes it."""

    entry: RegistryEntry
    """Its registry entry as it started (signed, and counted by the reader's vouching)."""
    functions: dict[str, dict[str, Any]]
    """Each function's schema (``params``, ``returns``, ``idempotent``, ``stream``, ...)."""


_info = msgspec.json.Decoder(_Info)
_schema = msgspec.json.Decoder(dict[str, Any])


def vouched(instance: str, metadata: dict[str, str], vouching: Vouching) -> RegistryEntry | None:
    """The registry entry a replica's ``$SRV`` answer shows in its ``metadata`` (its
    signed ``record``), if ``vouching`` counts it and it is the one answering."""
    actor = metadata.get("actor", "")
    entry = vouching.entry(f"{actor}.{instance}", metadata.get("record", "").encode())
    return entry if entry is not None and entry.address == metadata.get("address") else None


def read_service_info(data: bytes, name: str, vouching: Vouching) -> ServiceInfo | None:
    """The ``$SRV.INFO`` answer ``data`` of a replica of ``name``; ``None`` if it is not
    one (it does not decode, names another actor, or its registry record does not count
    for ``vouching``). A function whose schema does not decode is left out."""
    try:
        info = _info.decode(data)
    except UNDECODABLE:
        return None
    metadata = info.metadata or {}
    if metadata.get("actor") != name:
        return None
    entry = vouched(info.id, metadata, vouching)
    if entry is None:
        return None
    functions = {}
    for endpoint in info.endpoints:
        try:
            schema = _schema.decode((endpoint.metadata or {}).get("schema", "{}"))
        except UNDECODABLE:
            continue
        functions[endpoint.name] = schema
    return ServiceInfo(entry, functions)


def from_entries(entries: list[RegistryEntry], ttl: float) -> Known:
    return Known(
        frozenset(e.address for e in entries),
        frozenset(fn for e in entries for fn in e.idempotent),
        frozenset(fn for e in entries for fn in e.streams),
        time.monotonic() + ttl,
        "registry",
    )


async def service_infos(nc: NATS, name: str, vouching: Vouching) -> list[ServiceInfo]:
    """Ask every replica of ``name`` for its ``$SRV.INFO`` (answers within 2 s, and 30 ms
    of each other); those that ``vouching`` counts."""
    answers = await gather(
        nc,
        service_subject("INFO", name),
        b"",
        wait=_INFO_WAIT,
        limit=_INFO_LIMIT,
        quiet=_INFO_QUIET,
    )
    return [info for msg in answers if (info := read_service_info(msg.data, name, vouching))]


async def from_service_info(nc: NATS, name: str, ttl: float, vouching: Vouching) -> Known:
    """What the replicas of ``name`` that ``vouching`` counts say (:func:`service_infos`)."""
    addresses: set[str] = set()
    idempotent: set[str] = set()
    streams: set[str] = set()
    for info in await service_infos(nc, name, vouching):
        addresses.add(info.entry.address)
        for fn, schema in info.functions.items():
            if schema.get("idempotent") is True:
                idempotent.add(fn)
            if schema.get("stream") is True:
                streams.add(fn)
    expires = time.monotonic() + ttl
    return Known(
        frozenset(addresses), frozenset(idempotent), frozenset(streams), expires, "$SRV.INFO"
    )
