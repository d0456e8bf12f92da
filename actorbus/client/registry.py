"""The registry: which actor replicas are up, with their address and functions.

Each replica puts a :class:`RegistryEntry` under ``<name>.<instance>`` in the
``actor_registry`` KV bucket and refreshes it by heartbeat; the bucket's TTL removes
entries whose heartbeats stopped, and readers also skip entries past their own expiry.
Instance ids are 16 hex characters, so the filter ``<name>.*`` matches exactly the
replicas of ``name`` (a dotted name ``a.b`` has keys ``a.b.<id>``, never ``a.<id>``).
"""

from __future__ import annotations

import time

import msgspec

from ..bus import NATS, Bucket
from ..bus.subjects import REGISTRY_BUCKET, check_name

__all__ = ["Registry", "RegistryEntry"]


class RegistryEntry(msgspec.Struct, frozen=True):
    name: str
    address: str
    fns: list[str]
    node: str
    pid: int
    instance: str
    started: float
    version: str
    heartbeat: float = 0.0
    ttl: float = 15.0
    allow_fns: list[str] = msgspec.field(default_factory=list)
    deny_fns: list[str] = msgspec.field(default_factory=list)
    replica: int = 0
    """The replica's index on its node (``actor logs --replica``)."""
    calls: int = 0
    """Requests it has answered, as of its last heartbeat."""
    idempotent: list[str] = msgspec.field(default_factory=list)
    """Its functions marked idempotent: callers may retry them (PROTOCOL.md §7)."""
    streams: list[str] = msgspec.field(default_factory=list)
    """Its functions that stream their reply (PROTOCOL.md §4a)."""

    @property
    def key(self) -> str:
        return f"{self.name}.{self.instance}"

    @property
    def alive(self) -> bool:
        return time.time() < self.heartbeat + self.ttl


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(RegistryEntry).decode


class Registry:
    """Reads and writes registry entries; :meth:`open` binds (or creates) the bucket."""

    def __init__(self, bucket: Bucket, ttl: float) -> None:
        self._bucket = bucket
        self.ttl = ttl

    @classmethod
    async def open(cls, nc: NATS, *, ttl: float, replicas: int = 1) -> Registry:
        """Bind to the registry; entries live ``ttl`` seconds without a heartbeat, or less if
        the bucket was made with a shorter TTL (then heartbeats follow the bucket's)."""
        bucket = await Bucket.open(nc, REGISTRY_BUCKET, ttl=ttl, replicas=replicas)
        return cls(bucket, min(ttl, bucket.ttl) if bucket.ttl else ttl)

    async def put(self, entry: RegistryEntry) -> None:
        """Write ``entry`` with a fresh heartbeat."""
        entry = msgspec.structs.replace(entry, heartbeat=time.time(), ttl=self.ttl)
        await self._bucket.put(entry.key, _encode(entry))

    async def remove(self, entry: RegistryEntry) -> None:
        await self._bucket.delete(entry.key)

    async def entries(self, name: str | None = None) -> list[RegistryEntry]:
        """The live replicas of ``name`` (of every actor if ``None``), by name then start."""
        keys = f"{check_name(name)}.*" if name else ">"
        entries = []
        for value in await self._bucket.values(keys):
            try:
                entry = _decode(value)
            except msgspec.DecodeError:
                continue  # not ours: someone else wrote into the bucket
            if entry.alive:
                entries.append(entry)
        return sorted(entries, key=lambda e: (e.name, e.started))
