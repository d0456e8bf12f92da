"""The policy's records kept: what this policy actor last signed or read at each key, in
memory and in its home, written back over anything else that lands on those keys.

Signatures make the policy unforgeable, not indestructible: a connection with any
JetStream right can have the server answer onto a policy key (JetStream replies on the
subject a request names), and on a NATS without permissions anyone can write there. Hosts
ignore such an entry, but it has replaced the record (the bucket keeps one value per key):
unrepaired, a restarted host would miss that admin, role or binding. So every replica of
the policy actor follows its bucket and puts the last record of its own back (by
compare-and-set: one replica does), and keeps them in ``$ACTOR_HOME/pins/<bucket>.records``
(0600) so that a policy actor that starts after such a write restores them too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio
import msgspec

from ...bus import ActorError, LogThrottle, Unavailable, printable
from ...bus.jetstream import Bucket
from ...bus.records import open_record
from ...bus.wire import UNDECODABLE

__all__ = ["RecordKeeper"]

log = logging.getLogger("actorbus.policy")

_snapshot = msgspec.json.Decoder(dict[str, str])


class RecordKeeper:
    """The records of the policy key ``address`` in ``bucket``, kept at ``path``."""

    def __init__(self, bucket: Bucket, address: str, path: Path) -> None:
        self._bucket = bucket
        self._address = address
        self._path = path
        self._records: dict[str, bytes] = {}
        self._throttle = LogThrottle(log, burst=3, interval=60.0)
        self._dirty = anyio.Event()

    def ours(self, key: str, data: bytes) -> bool:
        """Whether ``data`` is a record of this policy at ``key``."""
        try:
            return open_record(self._bucket.name, key, data).by == self._address
        except ActorError:
            return False

    def load(self) -> None:
        """Read the kept records (those that still verify) from this home."""
        try:
            stored = _snapshot.decode(self._path.read_bytes())
        except FileNotFoundError:
            return
        except UNDECODABLE as exc:
            log.warning("policy: %s is not a record snapshot (%s): not used", self._path, exc)
            return
        for key, text in stored.items():
            if self.ours(key, text.encode()):
                self._records[key] = text.encode()

    def note(self, key: str, data: bytes) -> None:
        """``data``, a record of this policy, is what ``key`` holds now."""
        if self._records.get(key) != data:
            self._records[key] = data
            self._dirty.set()

    async def restore(self, key: str, found: tuple[bytes | None, int] | None = None) -> None:
        """Put this policy's last record back at ``key`` unless the bucket holds one of
        its own there. ``found`` is what the bucket's watch showed there (value,
        revision); without it, the bucket is asked. Compare-and-set: another replica, or
        another writer, may come first (and the watch shows that one next)."""
        kept = self._records.get(key)
        if kept is None:
            return
        if found is None:
            got = await self._bucket.get(key)
            found = got if got is not None else (None, 0)
        value, revision = found
        if value is not None and self.ours(key, value):
            return
        if await self._bucket.update(key, kept, revision) is not None:
            self._throttle.log(
                logging.WARNING,
                "restored",
                "policy: %s was written over by someone else: its record is restored",
                printable(key, 80),
            )

    async def restore_all(self) -> int:
        """Restore every kept record the bucket does not hold; returns how many are kept."""
        for key in list(self._records):
            await self.restore(key)
        return len(self._records)

    async def run(self) -> None:
        """Follow the bucket (noting this policy's records, restoring them over anything
        else) and keep the snapshot current, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._save_when_changed)
            while True:
                try:
                    async for item in self._bucket.watch():
                        if item is None:
                            continue
                        if item.value is not None and self.ours(item.key, item.value):
                            self.note(item.key, item.value)
                        elif item.key in self._records:
                            await self.restore(item.key, (item.value, item.revision))
                except Unavailable as exc:
                    log.debug("policy: following the bucket: %s", exc)
                await anyio.sleep(1.0)

    async def _save_when_changed(self) -> None:
        try:
            while True:
                await self._dirty.wait()
                self._dirty = anyio.Event()
                await anyio.to_thread.run_sync(self._save)
                await anyio.sleep(0.5)  # a burst of changes: one write
        finally:
            if self._dirty.is_set():  # stopping: what changed last is kept too
                self._save()

    def _save(self) -> None:
        """Write the snapshot, whole or not at all, readable by this user only."""
        data = msgspec.json.encode({k: v.decode() for k, v in self._records.items()})
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = self._path.with_name(f"{self._path.name}.{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        partial.replace(self._path)
