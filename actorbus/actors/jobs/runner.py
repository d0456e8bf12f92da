"""Running jobs: every replica of the jobs actor takes slices from the work queue and calls
each job's work function *as its owner*, with the owner's delegation.

Fairness and bounds: a replica runs at most ``jobs_concurrency`` slices at once, and at
most ``options.concurrency`` of one job. Each owner with active jobs has one task that
takes turns between its jobs; the owners' tasks wait for free slots in one FIFO queue, so
an owner with ten jobs gets no more of the replica than an owner with one.

A slice whose call fails with 408 or 5xx (the target overloaded or restarting, no
responders, no reply in time) is tried again after a jittered backoff, up to
``options.retries`` more times; 4xx is final. A 429 (the owner's quota is spent) is not a
failure: the slice waits as long as the target says and tries again. While this replica
has lost its NATS connection nothing counts as an attempt: it waits for the connection.
The result is stored (once per slice, :meth:`JobStore.save`) before the slice's message
is acknowledged, so a replica killed anywhere in between loses nothing: the message comes
back to a replica after its ack wait, and a slice already stored is just acknowledged.

Progress: each replica follows the results as they are stored (headers only) to count
done and failed slices per job, and marks a closed job finished once every slice has one.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.abc
import msgspec

from ...bus import NATS, ActorError, Keypair, LogThrottle, Msg, Unavailable
from ...bus.connection import on_reconnect
from ...bus.delegation import split_work
from ...bus.settings import Settings
from ...bus.tracing import trace_headers, use_trace
from ...bus.workqueue import Puller
from ...client import Client
from .model import ACTIVE, JobRecord, SliceResult
from .store import SLICE_HEADER, JobStore

__all__ = ["Runner"]

log = logging.getLogger("actorbus.jobs")

_BATCH = 16
"""Slices taken from the queue in one fetch, at most."""
_SAVE_CONCURRENCY = 256
"""Results one replica stores at once (each is one JetStream round trip)."""
_EMPTY_WAIT = 0.5
"""Seconds one fetch waits for a slice when the queue looks empty."""
_PENDING_AGE = 30.0
"""Seconds after which a batch still marked pending is queued again by anyone."""
_HOLD_STEP = 2.0
_ACK_MARGIN = 5.0
"""A slice not acknowledged nor marked in progress for its timeout plus this many seconds
(so: its replica is gone) is handed to another."""


class Tally:
    """The results of one job this replica has seen: counts, and which indices."""

    __slots__ = ("done", "failed", "recent", "seen")

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0
        self.seen = bytearray()
        self.recent: deque[float] = deque(maxlen=256)

    @property
    def count(self) -> int:
        return self.done + self.failed

    def has(self, index: int) -> bool:
        """Whether a result of slice ``index`` was seen."""
        return index < len(self.seen) and bool(self.seen[index])

    def add(self, index: int, status: int, live: bool) -> bool:
        """Count a result (once per index); ``live``: stored just now, not replayed."""
        if index >= len(self.seen):
            self.seen.extend(bytes(index + 1 - len(self.seen) + 1024))
        if self.seen[index]:
            return False
        self.seen[index] = 1
        if 200 <= status < 300:
            self.done += 1
        else:
            self.failed += 1
        if live:
            self.recent.append(time.monotonic())
        return True

    def rate(self) -> float:
        """Results per second over the last ones counted live (0 if too few or stale)."""
        if len(self.recent) < 2 or time.monotonic() - self.recent[-1] > 10:
            return 0.0
        span = self.recent[-1] - self.recent[0]
        return (len(self.recent) - 1) / span if span > 0 else 0.0


class Runner:
    """The slice workers of one jobs replica; :meth:`run` until cancelled."""

    def __init__(
        self, store: JobStore, client: Client, key: Keypair, nc: NATS, settings: Settings
    ) -> None:
        self.store = store
        self.client = client
        self.key = key
        self.nc = nc
        self.records: dict[str, JobRecord] = {}
        self.tallies: dict[str, Tally] = {}
        self.caught_up = False
        self._slots = anyio.Semaphore(settings.jobs_concurrency)
        self._saving = anyio.Semaphore(_SAVE_CONCURRENCY)
        self._changed = anyio.Event()
        self._owners: set[str] = set()
        self._local: dict[str, int] = {}
        self._indices: dict[str, set[int]] = {}
        """Per job, the slices this replica runs or stores the result of."""
        self._idle_until: dict[str, float] = {}
        self._pullers: dict[str, Puller] = {}
        self._running: dict[str, set[anyio.CancelScope]] = {}
        self._finishing: set[str] = set()
        self._throttle = LogThrottle(log)
        self._tg: anyio.abc.TaskGroup | None = None

    def tally(self, job: str) -> Tally:
        tally = self.tallies.get(job)
        if tally is None:
            tally = self.tallies[job] = Tally()
        return tally

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Follow the jobs and run their slices; started once the job records are read."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await tg.start(self._watch_records)
                tg.start_soon(self._follow_results)
                tg.start_soon(self._janitor)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                for puller in self._pullers.values():
                    await puller.close()

    # -- what the replica knows ----------------------------------------------------------

    async def _watch_records(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        started = False
        while True:
            with self._until_reconnected():
                try:
                    async for item in self.store.watch():
                        if item is None:
                            if not started:
                                started = True
                                task_status.started()
                            continue
                        self._on_record(*item)
                except Unavailable as exc:
                    self._throttle.log(
                        logging.WARNING, "watch", "jobs: watching job records: %s", exc
                    )
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(0.1)

    def _on_record(self, job: str, record: JobRecord | None) -> None:
        if record is None or record.state not in ACTIVE:
            for scope in self._running.get(job, ()):
                scope.cancel()  # cancelled (or gone): abandon its slices
            if (puller := self._pullers.pop(job, None)) is not None and self._tg is not None:
                self._tg.start_soon(puller.close)
        if record is None:  # expired: forget it
            for table in (self.records, self.tallies, self._idle_until, self._indices):
                table.pop(job, None)
            return
        self.records[job] = record
        self._idle_until.pop(job, None)
        if record.state in ACTIVE and record.owner not in self._owners and self._tg is not None:
            self._owners.add(record.owner)
            self._tg.start_soon(self._serve_owner, record.owner)
        self._poke()
        self._check_finished(job)

    async def _follow_results(self) -> None:
        while True:
            with self._until_reconnected():
                try:
                    async for job, index, status, caught_up in self.store.follow_results():
                        if self.tally(job).add(index, status, live=self.caught_up):
                            self._check_finished(job)
                        self.caught_up = self.caught_up or caught_up
                except Unavailable as exc:
                    self._throttle.log(
                        logging.WARNING, "follow", "jobs: following results: %s", exc
                    )
            await anyio.sleep(0.1)

    @contextlib.contextmanager
    def _until_reconnected(self) -> Iterator[None]:
        """A scope cancelled when the connection comes back after a loss: a watch that
        was running then is started again at once (its consumer may be gone with the
        server; NATS would notice only after missing heartbeats, seconds later). What
        it replays is counted once (results) or applied again (records)."""
        with anyio.CancelScope() as scope, on_reconnect(self.nc, scope.cancel):
            yield

    async def _janitor(self) -> None:
        """Queue again the batches whose adder stopped before queueing them all."""
        while True:
            await anyio.sleep(_PENDING_AGE / 3)
            now = time.time()
            for job, record in list(self.records.items()):
                for batch in record.pending:
                    if now - batch.at > _PENDING_AGE:
                        try:
                            await self.store.requeue(job, batch)
                        except (Unavailable, msgspec.DecodeError) as exc:
                            log.warning("jobs: could not queue a batch of %s again: %s", job, exc)

    def _poke(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _check_finished(self, job: str) -> None:
        record = self.records.get(job)
        if (
            record is None
            or record.state != "closed"
            or record.pending
            or self.tally(job).count < record.total
            or job in self._finishing
            or self._tg is None
        ):
            return
        self._finishing.add(job)
        self._tg.start_soon(self._finish, job)

    async def _finish(self, job: str) -> None:
        count = self.tally(job).count

        def finish(record: JobRecord) -> JobRecord | None:
            if record.state != "closed" or record.pending or count < record.total:
                return None
            return msgspec.structs.replace(record, state="finished", finished=time.time())

        try:
            if (await self.store.change(job, finish)).state == "finished":
                await self.store.drop_work(job)
        except Unavailable as exc:
            log.warning("jobs: could not mark %s finished: %s", job, exc)
        finally:
            self._finishing.discard(job)

    # -- taking slices -------------------------------------------------------------------

    async def _serve_owner(self, owner: str) -> None:
        """Take turns between ``owner``'s active jobs until it has none."""
        turn = 0
        try:
            while True:
                jobs = sorted(
                    j for j, r in self.records.items() if r.owner == owner and r.state in ACTIVE
                )
                if not jobs:
                    return
                now = time.monotonic()
                ready = [j for j in jobs if self._wants_slices(j, now)]
                if not ready:
                    changed = self._changed
                    with anyio.move_on_after(_EMPTY_WAIT):
                        await changed.wait()
                    continue
                job = ready[turn % len(ready)]
                turn += 1
                await self._take(job)
        finally:
            self._owners.discard(owner)

    def _wants_slices(self, job: str, now: float) -> bool:
        """Whether to take more of ``job``'s slices: it has room for a batch (or runs
        nothing), and its queue has not just been found empty."""
        record = self.records[job]
        room = record.options.concurrency - self._local.get(job, 0)
        return (
            (
                room >= min(_BATCH, (record.options.concurrency + 1) // 2)
                or room == record.options.concurrency
            )
            and self._idle_until.get(job, 0.0) <= now
            and self.tally(job).count < record.total
        )

    async def _take(self, job: str) -> None:
        """Take up to a batch of ``job``'s slices, as many as there are free slots for."""
        record = self.records[job]
        await self._slots.acquire()  # FIFO between the owners' tasks
        taken = 1
        want = min(_BATCH, record.options.concurrency - self._local.get(job, 0))
        while taken < want:
            try:
                self._slots.acquire_nowait()
            except anyio.WouldBlock:
                break
            taken += 1
        msgs: list[Msg] = []
        try:
            puller = self._pullers.get(job)
            if puller is None:
                puller = await self.store.puller(job, record.options.timeout + _ACK_MARGIN)
                self._pullers[job] = puller
            msgs = await puller.fetch(taken, _EMPTY_WAIT)
        except Unavailable as exc:
            self._throttle.log(logging.WARNING, "fetch", "jobs: taking slices of %s: %s", job, exc)
            await anyio.sleep(0.5)
        finally:
            for _ in range(taken - len(msgs)):
                self._slots.release()
        if not msgs:
            self._idle_until[job] = time.monotonic() + _EMPTY_WAIT
        assert self._tg is not None
        running = self._indices.setdefault(job, set())
        for msg in msgs:
            index = (msg.headers or {}).get(SLICE_HEADER, "")
            sealed = self.store.seals.check(msg.subject, index, msg.headers, msg.data)
            if not sealed or self.tally(job).has(int(index)) or int(index) in running:
                # Not this actor's, or a slice stored again (a replay; one whose result
                # was stored and its ack lost): it runs once, never again.
                self._slots.release()
                self._tg.start_soon(_quietly, msg.term())
                continue
            self._local[job] = self._local.get(job, 0) + 1
            running.add(int(index))
            self._tg.start_soon(self._run_slice, job, msg)

    # -- running one slice ---------------------------------------------------------------

    async def _run_slice(self, job: str, msg: Msg) -> None:
        """Run one slice in one of its job's slots; its result is stored after the slot is
        free again (storing is not calling: it holds one of the replica's save slots)."""
        scope = anyio.CancelScope()
        self._running.setdefault(job, set()).add(scope)
        result: SliceResult | None = None
        try:
            with scope:
                record = self.records.get(job)
                if record is None:
                    return  # gone: its queue goes with it
                try:
                    result = await self._execute(record, msg)
                except Exception as exc:  # a bug of ours: the slice comes back, the replica stays
                    self._throttle.log(
                        logging.ERROR, "bug", "jobs: a slice of %s failed", job, exc_info=exc
                    )
        finally:
            self._local[job] -= 1
            self._slots.release()
            self._poke()  # its owner's task may take another
        try:
            with scope:
                if result is not None:
                    async with self._saving:
                        await self._save(job, result, msg)
            if scope.cancel_called:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await _quietly(msg.term())  # cancelled: never again
        finally:
            self._running[job].discard(scope)
            self._indices.get(job, set()).discard(int((msg.headers or {})[SLICE_HEADER]))

    async def _execute(self, record: JobRecord, msg: Msg) -> SliceResult:
        job = record.id
        index = int((msg.headers or {})[SLICE_HEADER])
        taken = msg.metadata.num_delivered or 1
        if taken > record.options.retries + 3:
            return SliceResult(
                index,
                500,
                taken - 1,
                error=f"gave up: slice {index} was taken {taken - 1} times and its worker "
                "stopped each time",
            )
        actor, fn = split_work(record.work)
        use_trace(trace_headers(record.trace))  # its slices are part of its submit's trace
        attempt = 1
        while True:
            record = self.records.get(job, record)
            try:
                reply = await self._call(record, actor, fn, msg.data)
            except ActorError as exc:
                if not self.nc.is_connected:
                    await _hold(msg, 0.5)  # our own bus is down: not the slice's fault
                    continue
                if exc.status == 429:
                    await _hold(msg, getattr(exc, "retry_after", 1.0))
                    continue
                if (exc.status >= 500 or exc.status == 408) and attempt <= record.options.retries:
                    await _hold(msg, random.uniform(0.5, 1.5) * min(2 ** (attempt - 1), 10))
                    attempt += 1
                    continue
                return SliceResult(
                    index, exc.status, attempt, error=exc.message, id=exc.error_id or ""
                )
            return SliceResult(index, 200, attempt, value=msgspec.Raw(reply))

    async def _call(self, record: JobRecord, actor: str, fn: str, body: bytes) -> bytes:
        """One slice call as the owner: the reply's body if 2xx, else its error raised."""
        reply = await self.client.call_as(
            self.key,
            actor,
            fn,
            body,
            record.options.timeout,
            on_behalf=record.owner,
            delegation=record.delegation.header,
        )
        reply.result()  # raises the error of a non-2xx reply
        return reply.body

    async def _save(self, job: str, result: SliceResult, msg: Msg) -> None:
        """Store the result, then acknowledge the slice; if NATS is away, keep trying
        while the slice is ours (its ack wait), then leave it to be taken again."""
        record = self.records.get(job)
        with anyio.move_on_after(record.options.timeout if record else _ACK_MARGIN):
            while True:
                try:
                    await self.store.save(job, result)
                except Unavailable as exc:
                    self._throttle.log(
                        logging.WARNING, "save", "jobs: storing a result of %s: %s", job, exc
                    )
                    await _hold(msg, 0.5)
                    continue
                await _quietly(msg.ack())  # if it is lost, the stored result is found again
                return


async def _hold(msg: Msg, seconds: float) -> None:
    """Wait ``seconds`` while keeping the slice ours (in progress: no redelivery)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await _quietly(msg.in_progress())
        await anyio.sleep(min(left, _HOLD_STEP))


async def _quietly(action: Any) -> None:
    """An ack-like publish whose failure only means the slice comes back later."""
    try:
        await action
    except Exception as exc:  # the connection is down: redelivery covers it
        log.debug("jobs: %s", exc)
