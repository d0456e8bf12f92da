"""What a caller knows of an actor: the addresses its replies may be signed by, and which
of its functions are idempotent; from the registry (JetStream), or, when JetStream cannot
answer, from the replicas themselves over ``$SRV.INFO`` (core NATS).

Both sources are as trustworthy as the bus: registry entries and ``$SRV`` answers are
written by whoever NATS permissions let write them, so keep untrusted clients off
``actor.>``, ``$SRV.>`` and ``$KV.actor_registry.>``.
"""

from __future__ import annotations

import time

import msgspec

from ..bus import NATS
from ..bus.connection import gather
from .registry import RegistryEntry

__all__ = ["Known", "from_entries", "from_service_info"]

_INFO_WAIT = 0.25
"""Seconds to collect ``$SRV.INFO`` answers (replicas answer at once; this bounds it)."""
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

    metadata: dict[str, str] | None = None
    endpoints: list[_Endpoint] = msgspec.field(default_factory=list)


class _Schema(msgspec.Struct):
    idempotent: bool = False
    stream: bool = False


_info = msgspec.json.Decoder(_Info)
_schema = msgspec.json.Decoder(_Schema)


def from_entries(entries: list[RegistryEntry], ttl: float) -> Known:
    return Known(
        frozenset(e.address for e in entries),
        frozenset(fn for e in entries for fn in e.idempotent),
        frozenset(fn for e in entries for fn in e.streams),
        time.monotonic() + ttl,
        "registry",
    )


async def from_service_info(nc: NATS, name: str, ttl: float) -> Known:
    """Ask every replica of ``name`` for its ``$SRV.INFO`` (answers within 0.25 s)."""
    addresses: set[str] = set()
    idempotent: set[str] = set()
    streams: set[str] = set()
    subject = f"$SRV.INFO.{name.replace('.', '_')}"
    for msg in await gather(nc, subject, b"", wait=_INFO_WAIT, limit=_INFO_LIMIT):
        try:
            info = _info.decode(msg.data)
        except msgspec.DecodeError:
            continue
        metadata = info.metadata or {}
        if metadata.get("actor") != name or "address" not in metadata:
            continue
        addresses.add(metadata["address"])
        for endpoint in info.endpoints:
            try:
                schema = _schema.decode((endpoint.metadata or {}).get("schema", "{}"))
            except msgspec.DecodeError:
                continue
            if schema.idempotent:
                idempotent.add(endpoint.name)
            if schema.stream:
                streams.add(endpoint.name)
    expires = time.monotonic() + ttl
    return Known(
        frozenset(addresses), frozenset(idempotent), frozenset(streams), expires, "$SRV.INFO"
    )
