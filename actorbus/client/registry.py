"""The registry: which actor replicas are up, with their address and functions.

Each replica puts a :class:`RegistryEntry` under ``<name>.<instance>`` in the
``actor_registry`` KV bucket and refreshes it by heartbeat; the bucket's TTL removes
entries whose heartbeats stopped, and readers also skip entries past their own expiry.
Instance ids are 16 hex characters, so the filter ``<name>.*`` matches exactly the
replicas of ``name`` (a dotted name ``a.b`` has keys ``a.b.<id>``, never ``a.<id>``).

An entry is a signed record (:mod:`actorbus.bus.records`) by the replica's own key, and
carries the policy's signed binding of its name (``name.<name>`` in the policy bucket, the
keys that may serve it). A reader whose home trusts a policy key (:mod:`actorbus.bus.pins`)
counts an entry only if its binding is signed by that key and lists the entry's address
(the policy actor's own entries: signed by that key itself); any reader drops an entry
that is not signed by the address it names, sits under another key, or does not decode.
So whoever may write the bucket (a NATS without permissions, a leaked leaf credential)
cannot put an address of theirs in the registry.
"""

from __future__ import annotations

import logging
import time

import msgspec

from ..bus import (
    NATS,
    ActorError,
    Bucket,
    Forbidden,
    Keypair,
    LogThrottle,
    ReplyTimeout,
    Unavailable,
    printable,
    request,
)
from ..bus.pins import pin_policy, pinned_policy
from ..bus.records import open_record, sign_record
from ..bus.settings import Settings
from ..bus.subjects import REGISTRY_BUCKET, check_name
from ..bus.wire import UNDECODABLE

__all__ = ["Registry", "RegistryEntry", "Vouching", "signed_entry"]

log = logging.getLogger("actorbus.registry")
_PROBE_WAIT = 5.0
_throttle = LogThrottle(log, burst=3, interval=60.0)
"""Entries that do not count, said in this process at most 3 times a minute per reason."""


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
    binding: str = ""
    """The policy's signed record of the keys that may serve this name, as the replica
    last read it (JSON text; empty while there is none)."""

    @property
    def key(self) -> str:
        return f"{self.name}.{self.instance}"

    @property
    def alive(self) -> bool:
        return time.time() < self.heartbeat + self.ttl


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(RegistryEntry).decode
_addresses = msgspec.json.Decoder(list[str]).decode


def signed_entry(entry: RegistryEntry, key: Keypair) -> bytes:
    """``entry`` as its registry record, signed by ``key`` (the replica's)."""
    return sign_record(key, REGISTRY_BUCKET, entry.key, _encode(entry))


class Vouching:
    """Which registry entries (or ``$SRV.INFO`` records) a reader counts, by the policy key
    the home of ``settings`` trusts: configured, its own, or pinned at first contact (by a
    host, from the first policy record it reads; by a client, from the policy actor's own
    entries, :meth:`first_contact`)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._trusted: str | None = None
        self.contacted = False
        """Whether :meth:`first_contact` has looked (it looks once)."""
        self._ambiguous = ""

    @property
    def policy(self) -> str:
        """The policy actor's name."""
        return self._settings.policy

    @property
    def trusted(self) -> str | None:
        if self._trusted is None:
            try:
                self._trusted = pinned_policy(self._settings)
            except ActorError as exc:
                _throttle.log(logging.WARNING, "pin", "%s", exc.message)
        return self._trusted

    def first_contact(self, policies: list[RegistryEntry]) -> None:
        """Pin the policy key from the policy actor's own entries (each signed by its
        address, so the address is the key its records are signed by) if this home
        trusts none yet. Entries of two different keys under the policy's name: nothing
        is pinned and nothing counts (someone else serves that name too), and the reader
        is told to configure the key."""
        self.contacted = True
        if self.trusted is not None:
            return
        addresses = {e.address for e in policies if e.name == self._settings.policy}
        if len(addresses) == 1:
            (address,) = addresses
            pin_policy(self._settings, address)
            self._trusted = address
            log.warning(
                "policy %s: trusting its key %s from now on", self._settings.policy, address
            )
        elif addresses:
            self._ambiguous = (
                f"{len(addresses)} keys serve {self._settings.policy!r}: set ACTOR_POLICY_KEY "
                "to the one to trust"
            )
            _throttle.log(logging.WARNING, "ambiguous", "registry: %s", self._ambiguous)

    def entry(self, key: str, data: bytes) -> RegistryEntry | None:
        """The entry stored at ``key`` if it counts; ``None`` (reported, throttled) if not."""
        try:
            record = open_record(REGISTRY_BUCKET, key, data)
            if record.value is None:
                return None
            entry = _decode(record.value)
            check_name(entry.name)
        except (ActorError, *UNDECODABLE) as exc:
            why = str(exc)
        else:
            if entry.key != key or entry.address != record.by:
                why = f"signed by {record.by}, not the address it names"
            else:
                why = self._unbound(entry)
            if not why:
                return entry
            if not entry.binding:  # a replica that has not claimed its name yet: no forgery
                log.debug("registry: not counting %s yet: %s", printable(key, 80), why[:200])
                return None
        _throttle.log(
            logging.WARNING, "entry", "registry: ignoring %s: %s", printable(key, 80), why[:200]
        )
        return None

    def _unbound(self, entry: RegistryEntry) -> str:
        """Why the policy does not let ``entry``'s address serve its name ('' if it does)."""
        trusted = self.trusted
        settings = self._settings
        if self._ambiguous and trusted is None:
            return self._ambiguous
        if trusted is None:
            return ""  # no policy known to this home: the entry's own signature is all
        if entry.name == settings.policy:
            return "" if entry.address == trusted else "not the policy's key"
        try:
            binding = open_record(
                settings.policy_bucket, "name." + entry.name, entry.binding.encode()
            )
            bound = _addresses(binding.value or b"[]")
        except (ActorError, *UNDECODABLE):
            return f"{entry.name} has no binding the policy signed"
        if binding.by != trusted:
            return f"its binding is signed by {binding.by}, not the policy's key"
        if entry.address not in bound:
            return f"{entry.address} is not bound to {entry.name}"
        return ""


class Registry:
    """Reads and writes registry entries; :meth:`open` binds (or creates) the bucket."""

    def __init__(self, bucket: Bucket, ttl: float, vouching: Vouching) -> None:
        self._bucket = bucket
        self.ttl = ttl
        self.vouching = vouching

    @classmethod
    async def open(cls, nc: NATS, settings: Settings, vouching: Vouching | None = None) -> Registry:
        """Bind to the registry; entries live ``registry_ttl`` seconds without a heartbeat,
        or less if the bucket was made with a shorter TTL (then heartbeats follow the
        bucket's). Raises :class:`Forbidden` if this connection may not read it."""
        ttl = settings.registry_ttl
        # Asked first with a request of ours, so that a connection the server does not
        # let read it (a caller's key) learns so at once (Forbidden), not at a timeout.
        try:
            await request(nc, f"$JS.API.STREAM.INFO.KV_{REGISTRY_BUCKET}", b"", {}, _PROBE_WAIT)
        except ReplyTimeout:
            raise Unavailable("the registry: JetStream did not answer") from None
        except Forbidden:
            raise Forbidden(
                "this key may not read the registry: admins and actors do (a caller finds "
                "the actors it calls through $SRV.INFO)"
            ) from None
        bucket = await Bucket.open(nc, REGISTRY_BUCKET, ttl=ttl, replicas=settings.js_replicas)
        ttl = min(ttl, bucket.ttl) if bucket.ttl else ttl
        return cls(bucket, ttl, vouching or Vouching(settings))

    async def put(self, entry: RegistryEntry, key: Keypair) -> None:
        """Write ``entry`` with a fresh heartbeat, signed by ``key`` (the replica's)."""
        entry = msgspec.structs.replace(entry, heartbeat=time.time(), ttl=self.ttl)
        await self._bucket.put(entry.key, signed_entry(entry, key))

    async def remove(self, entry: RegistryEntry) -> None:
        await self.forget(entry.name, entry.instance)

    async def forget(self, name: str, instance: str) -> None:
        """Delete the entry of replica ``instance`` of ``name`` (a key may delete only its
        own: the bus refuses the rest)."""
        await self._bucket.delete(f"{check_name(name)}.{instance}")

    async def entries(self, name: str | None = None) -> list[RegistryEntry]:
        """The live replicas of ``name`` (of every actor if ``None``) that count, by name
        then start."""
        keys = f"{check_name(name)}.*" if name else ">"
        vouching = self.vouching
        if not vouching.contacted and vouching.trusted is None:
            found = await self._bucket.items(f"{vouching.policy}.*")
            vouching.first_contact([e for k, v in found if (e := vouching.entry(k, v))])
        entries = []
        for key, value in await self._bucket.items(keys):
            entry = self.vouching.entry(key, value)
            if entry is not None and entry.alive:
                entries.append(entry)
        return sorted(entries, key=lambda e: (e.name, e.started))
