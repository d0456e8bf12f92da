"""The policy's records kept: what this policy actor last signed or read at each key, in
its home, written back over anything else that lands on those keys.

Signatures make the policy unforgeable, not indestructible: a connection with any
JetStream right can have the server answer onto a policy key (JetStream replies on the
subject a request names), and on a NATS without permissions anyone can write there. Hosts
ignore such an entry, but it has replaced the record (the bucket keeps one value per key):
unrepaired, a restarted host would miss that admin, role or binding. So every replica of
the policy actor follows its bucket and puts the last record of its own back (by
compare-and-set: one replica does), and keeps them in ``$ACTOR_HOME/pins/<bucket>.records``
(0600) so that a policy actor that starts after such a write restores them too.

The file is a log: each record this policy signs or reads is one line appended
(``<key>\\t<record>``), the last line of a key wins, and the log is rewritten without its
dead lines once they outweigh the live ones. One thread owns the file and the index of
where each key's last line is; the event loop hands it immutable lines and questions
(:class:`_Ask`) on a queue and awaits the answers. An earlier keeper rewrote a snapshot of
every record after each burst of changes, in a thread iterating the dict the loop was
adding to: past ~10,000 records an insert landed mid-iteration and the policy actor
crashed ("dictionary changed size during iteration"; issue 29), and each burst rewrote
megabytes for one change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any, Final

import anyio
import msgspec

from ...bus import ActorError, LogThrottle, Unavailable, printable
from ...bus.jetstream import Bucket
from ...bus.records import open_record
from ...bus.wire import UNDECODABLE

__all__ = ["RecordKeeper"]

log = logging.getLogger("actorbus.policy")

_COMPACT_SLACK: Final = 1 << 20
"""Bytes of dead lines the log may hold beyond as many as its live ones."""
_snapshot = msgspec.json.Decoder(dict[str, str])


class _Ask:
    """A question for the keeper's thread, answered through the loop."""

    __slots__ = ("future", "key", "loop")

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = self.loop.create_future()

    def answer(self, value: Any) -> None:
        def give() -> None:
            if not self.future.done():
                self.future.set_result(value)

        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            self.loop.call_soon_threadsafe(give)


def version_of(record: bytes) -> int:
    """The version of a record of this policy's, as it signs them (``,"n":<n>}`` last);
    0 for one without."""
    start = record.rfind(b',"n":')
    if start < 0 or start < record.rfind(b'"sig":') or not record.endswith(b"}"):
        return 0
    digits = record[start + 5 : -1]
    return int(digits) if digits.isdigit() else 0


class _Log:
    """The records file, and where each key's last line is in it (the thread's alone)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index: dict[str, tuple[int, int, int]] = {}
        """Per key: the offset and length of its last record in the file, and the record's
        hash (a record the bucket shows again is not written again)."""
        self.versions: dict[str, int] = {}
        """Per key, the version of its last record (none: 0)."""
        self.live = 0
        """Bytes of the lines the index points at."""
        self.size = 0

    def open(self) -> None:
        """Read the index from the file, a line at a time (a line cut short by a crash is
        cut off; a snapshot of the keeper before issue 29, one JSON object, is turned
        into lines)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            file = open(self.path, "rb")  # noqa: SIM115 - closed below, or by the with
        except FileNotFoundError:
            self.path.touch(mode=0o600)
            return
        with file:
            if file.read(1) == b"{":
                self._from_snapshot(file)
                return
            file.seek(0)
            offset = 0
            for line in file:
                if not line.endswith(b"\n"):
                    break  # torn by a crash
                key, tab, record = line[:-1].partition(b"\t")
                if tab:
                    self._point(key.decode(errors="replace"), offset, record)
                offset += len(line)
        if offset != self.path.stat().st_size:
            os.truncate(self.path, offset)
        self.size = offset
        os.chmod(self.path, 0o600)

    def _from_snapshot(self, file: Any) -> None:
        file.seek(0)
        try:
            records = _snapshot.decode(file.read())
        except UNDECODABLE as exc:
            log.warning("policy: %s is not a record snapshot (%s): not used", self.path, exc)
            records = {}
        self.path.unlink()
        self.path.touch(mode=0o600)
        self.append([(key, text.encode()) for key, text in records.items()])

    def _point(self, key: str, offset: int, record: bytes) -> None:
        """The line at ``offset`` is ``key``'s last: ``key``, a tab, ``record``, LF."""
        line = len(key.encode()) + len(record) + 2
        old = self.index.get(key)
        if old is not None:
            self.live -= len(key.encode()) + old[1] + 2
        self.index[key] = (offset + line - len(record) - 1, len(record), hash(record))
        self.live += line
        version = version_of(record)
        if version:
            self.versions[key] = version
        else:
            self.versions.pop(key, None)

    def append(self, lines: list[tuple[str, bytes]]) -> None:
        """Append the records that are not what their keys hold already."""
        chunks = []
        offset = self.size
        for key, record in lines:
            old = self.index.get(key)
            if old is not None and old[1] == len(record) and old[2] == hash(record):
                continue
            line = key.encode() + b"\t" + record + b"\n"
            self._point(key, offset, record)
            offset += len(line)
            chunks.append(line)
        if not chunks:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as file:
            file.write(b"".join(chunks))
        self.size = offset
        if self.size > 2 * self.live + _COMPACT_SLACK:
            self.compact()

    def read(self, key: str) -> bytes | None:
        where = self.index.get(key)
        if where is None:
            return None
        with open(self.path, "rb") as file:
            file.seek(where[0])
            return file.read(where[1])

    def compact(self) -> None:
        """Rewrite the file with each key's last line only, whole or not at all."""
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        index: dict[str, tuple[int, int, int]] = {}
        offset = 0
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out, open(self.path, "rb") as old:
            for key, (start, length, digest) in self.index.items():
                old.seek(start)
                prefix = key.encode() + b"\t"
                out.write(prefix + old.read(length) + b"\n")
                index[key] = (offset + len(prefix), length, digest)
                offset += len(prefix) + length + 1
        partial.replace(self.path)
        self.index, self.size, self.live = index, offset, offset


class RecordKeeper:
    """The records of the policy key ``address`` in ``bucket``, kept at ``path``.

    An async context manager: on entry its thread has read the file's index; on exit
    what was noted is written, and the thread ends."""

    def __init__(self, bucket: Bucket, address: str, path: Path) -> None:
        self._bucket = bucket
        self._address = address
        self._log = _Log(path)
        self._jobs: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._versions: dict[str, int] = {}
        """Per key, the version of the last record kept (the loop's own copy)."""
        self._thread: threading.Thread | None = None
        self._throttle = LogThrottle(log, burst=3, interval=60.0)

    async def __aenter__(self) -> RecordKeeper:
        opened = _Ask(None)
        self._thread = threading.Thread(
            target=self._work, args=(opened,), name="policy records", daemon=True
        )
        self._thread.start()
        await opened.future
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        done = _Ask(None)
        self._jobs.put(("stop", done))
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await done.future

    def _work(self, opened: _Ask) -> None:
        """The thread: the only one that touches the file and its index."""
        try:
            self._log.open()
        finally:
            opened.answer(None)
        while True:
            kind, arg = self._jobs.get()
            if kind == "note":  # take every note queued: one write for a burst
                lines = [arg]
                while True:
                    try:
                        kind, arg = self._jobs.get_nowait()
                    except queue.Empty:
                        kind = ""
                        break
                    if kind != "note":
                        break
                    lines.append(arg)
                try:
                    self._log.append(lines)
                except OSError as exc:
                    log.error("policy: cannot keep records in %s: %s", self._log.path, exc)
                if not kind:
                    continue
            if kind == "read":
                arg.answer(self._log.read(arg.key))
            elif kind == "keys":
                versions = self._log.versions
                arg.answer({key: versions.get(key, 0) for key in self._log.index})
            elif kind == "stop":
                arg.answer(None)
                return

    def ours(self, key: str, data: bytes) -> bool:
        """Whether ``data`` is a record of this policy at ``key``."""
        try:
            return open_record(self._bucket.name, key, data).by == self._address
        except ActorError:
            return False

    def note(self, key: str, data: bytes) -> None:
        """``data``, a record of this policy, is what ``key`` holds now (kept on disk
        shortly after; the line and its key are immutable, so the thread may have them)."""
        version = version_of(data)
        if version:
            self._versions[key] = version
        self._jobs.put(("note", (key, data)))

    def _current(self, key: str, data: bytes) -> bool:
        """Whether ``data`` is a record of this policy at ``key`` no older than the last
        one kept there (an older one is a replay: it verifies, and undoes a change)."""
        return self.ours(key, data) and version_of(data) >= self._versions.get(key, 0)

    async def kept(self, key: str) -> bytes | None:
        """The last record of this policy's that ``key`` held, if it still verifies."""
        ask = _Ask(key)
        self._jobs.put(("read", ask))
        data: bytes | None = await ask.future
        return data if data is not None and self.ours(key, data) else None

    async def restore(self, key: str, found: tuple[bytes | None, int] | None = None) -> None:
        """Put this policy's last record back at ``key`` unless the bucket holds one of
        its own there, as recent. ``found`` is what the bucket's watch showed there
        (value, revision); without it, the bucket is asked. Compare-and-set: another
        replica, or another writer, may come first (and the watch shows that one next)."""
        if found is not None and found[0] is not None and self._current(key, found[0]):
            return
        kept = await self.kept(key)
        if kept is None:
            return
        if found is None:
            got = await self._bucket.get(key)
            found = got if got is not None else (None, 0)
        value, revision = found
        if value is not None and self._current(key, value):
            return
        if await self._bucket.update(key, kept, revision) is not None:
            self._throttle.log(
                logging.WARNING,
                "restored",
                "policy: %s was written over by someone else: its record is restored",
                printable(key, 80),
            )

    async def restore_missing(self, held: dict[str, int]) -> tuple[int, int]:
        """Restore every kept record whose key is not in ``held`` (the keys where the
        bucket holds a record of this policy, and its version) or is held at an older
        version; returns how many keys are kept, and how many were restored."""
        ask = _Ask(None)
        self._jobs.put(("keys", ask))
        kept: dict[str, int] = await ask.future
        self._versions = {key: version for key, version in kept.items() if version}
        restored = 0
        for key, version in kept.items():
            if key not in held or held[key] < version:
                await self.restore(key)
                restored += 1
        return len(kept), restored

    async def run(self) -> None:
        """Follow the bucket (noting this policy's records, restoring them over anything
        else), until cancelled."""
        while True:
            try:
                async for item in self._bucket.watch():
                    if item is None:
                        continue
                    if item.value is not None and self._current(item.key, item.value):
                        self.note(item.key, item.value)
                    else:
                        await self.restore(item.key, (item.value, item.revision))
            except Unavailable as exc:
                log.debug("policy: following the bucket: %s", exc)
            await anyio.sleep(1.0)
