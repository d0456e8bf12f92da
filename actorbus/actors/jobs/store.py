"""Where jobs live on JetStream, and the only module that writes them.

- **Job records** in the KV bucket ``actor_jobs_<name>``: changed by compare-and-set only
  (:meth:`JobStore.change`), so replicas of the jobs actor never overwrite each other.
- **Slices** in the work-queue stream ``ACTOR_JOBS_<NAME>``, one message per slice on
  ``actorbus.jobs.<name>.work.<job>`` with its index in ``Actor-Slice``, published with the
  message id ``<job>.<index>`` (stored once within the duplicate window). A job's slices
  are read through the durable pull consumer ``job_<job>``; acknowledged means done.
- **Batches and results** in the stream ``ACTOR_JOB_RESULTS_<NAME>``: each batch of slices
  added is stored whole first (``…batch.<job>``), then its indices are allocated in the
  job record with the batch marked pending, then its slices are queued, then the mark is
  cleared. Whoever finds a batch pending for long (its adder stopped midway) queues it
  again from the stored copy: a batch is never half lost. A result is stored once per
  slice (``…result.<job>.<index>``, expected last subject sequence 0): a slice run twice
  (a worker killed after the call, before its acknowledgement) keeps its first result.

Everything here expires after the jobs' retention (``ACTOR_JOBS_RETENTION``), and is
sealed by the jobs actor's key (:mod:`.seals`): what is not is ignored, never run.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import msgspec

from ...bus import NATS, CallBody, Keypair, Msg, Unavailable
from ...bus.jetstream import Bucket, stream_messages
from ...bus.settings import Settings
from ...bus.subjects import JobsNames
from ...bus.workqueue import (
    Puller,
    consumer_counts,
    consumer_exists,
    delete_consumer,
    last_message,
    message_at,
    publish_deduplicated,
    publish_once,
    purge_subject,
)
from .model import Batch, JobRecord, SliceResult
from .seals import Seals
from .streams import jobs_streams

__all__ = ["SLICE_HEADER", "STATUS_HEADER", "JobStore", "OpenQueue", "call_body"]

OpenQueue = Callable[[str, float], Awaitable[None]]
"""``open_queue(job, ack_wait)``: have ``job``'s queue made
(:func:`~actorbus.bus.workqueue.open_queue`)."""

SLICE_HEADER = "Actor-Slice"
STATUS_HEADER = "Actor-Status"
_QUEUE_CONCURRENCY = 128

_result = msgspec.json.Decoder(SliceResult)
_slices = msgspec.json.Decoder(list[list[Any]])
_encode = msgspec.json.Encoder().encode


def call_body(args: list[Any]) -> bytes:
    """A slice as the body of its call."""
    return _encode(CallBody(args=args))


class JobStore:
    """The jobs of the jobs actor ``name`` on JetStream."""

    def __init__(
        self, nc: NATS, names: JobsNames, records: Bucket, seals: Seals, open_queue: OpenQueue
    ) -> None:
        self.nc = nc
        self.names = names
        self.records = records
        self.seals = seals
        self._open_queue = open_queue
        self._genuine: dict[str, JobRecord] = {}
        """The last record of each job this actor sealed, as read: what a record written
        over by someone else is restored to."""

    @classmethod
    async def open(
        cls, nc: NATS, name: str, settings: Settings, key: Keypair, open_queue: OpenQueue
    ) -> JobStore:
        """Bind to (or, on a NATS without the policy's callout, create) the bucket and
        streams of the jobs actor ``name``, whose key is ``key``; ``open_queue(job,
        ack_wait)`` has a job's queue made (:meth:`puller`)."""
        names = JobsNames(name)
        records = await jobs_streams(nc, name, settings, adjust=False)
        return cls(nc, names, records, Seals(key, names.bucket), open_queue)

    # -- job records -------------------------------------------------------------------

    async def get(self, job: str) -> JobRecord | None:
        found = await self.records.get(job)
        return None if found is None else self._opened(job, found[0])

    async def create(self, record: JobRecord) -> bool:
        """Store a new job; ``False`` if its id is taken."""
        sealed = self.seals.record(record.id, record)
        return await self.records.update(record.id, sealed, 0) is not None

    async def change(self, job: str, edit: Callable[[JobRecord], JobRecord | None]) -> JobRecord:
        """Apply ``edit`` to the current record of ``job`` until it sticks (compare-and-set);
        ``edit`` returns ``None`` to leave it as it is, or raises to refuse."""
        while True:
            found = await self.records.get(job)
            record = None if found is None else self._opened(job, found[0])
            if found is None or record is None:
                raise Unavailable(f"job {job} vanished")  # expired under us
            edited = edit(record)
            if edited is None:
                return record
            sealed = self.seals.record(job, edited)
            if await self.records.update(job, sealed, found[1]) is not None:
                return edited

    async def watch(self) -> AsyncIterator[tuple[str, JobRecord | None] | None]:
        """Every job record, ``None`` once caught up, then each change (``None``: gone)."""
        async for item in self.records.watch():
            if item is None:
                yield None
                continue
            key, value = item.key, item.value
            if value is None:
                self._genuine.pop(key, None)
                yield key, None
                continue
            if self.seals.open_record(key, value) is None and key in self._genuine:
                await self._restore(key, item.revision)
                continue
            record = self._opened(key, value)
            if record is not None:
                yield key, record

    def _opened(self, job: str, data: bytes) -> JobRecord | None:
        """The record of ``job`` stored as ``data``: itself if this actor sealed it (and
        then remembered), else the last one it did (``None`` if none)."""
        record = self.seals.open_record(job, data)
        if record is None:
            return self._genuine.get(job)
        self._genuine[job] = record
        return record

    async def _restore(self, job: str, revision: int) -> None:
        """Write ``job``'s last sealed record back over the one someone else wrote at
        ``revision`` (if it is still there: compare-and-set)."""
        await self.records.update(job, self.seals.record(job, self._genuine[job]), revision)

    # -- slices --------------------------------------------------------------------------

    async def add(
        self, job: str, slices: list[list[Any]], allocate: Callable[[JobRecord, Batch], None]
    ) -> tuple[int, int]:
        """Give ``slices`` the next indices of ``job`` and queue them; returns the first
        and last index. ``allocate(record, batch)`` may refuse (a closed job)."""
        seq = await self._store_batch(job, slices)
        start = 0

        def reserve(record: JobRecord) -> JobRecord:
            nonlocal start
            start = record.total + 1
            batch = Batch(start, len(slices), seq, time.time())
            allocate(record, batch)
            pending = [*record.pending, batch]
            total = record.total + len(slices)
            return msgspec.structs.replace(record, total=total, pending=pending)

        await self.change(job, reserve)
        await self._queue(job, start, slices)
        await self.change(job, lambda r: _without(r, start))
        return start, start + len(slices) - 1

    async def requeue(self, job: str, batch: Batch) -> None:
        """Queue a batch found pending again (message ids keep it from running twice)."""
        stored = await message_at(self.nc, self.names.record_stream, batch.seq)
        subject = self.names.batch(job)
        if (
            stored is not None
            and stored.data is not None
            and stored.subject == subject
            and self.seals.check(subject, "", stored.headers, stored.data)
        ):
            await self._queue(job, batch.start, _slices.decode(stored.data))
        await self.change(job, lambda r: _without(r, batch.start))

    async def _store_batch(self, job: str, slices: list[list[Any]]) -> int:
        msg_id = f"{job}.{time.time_ns()}"
        subject, body = self.names.batch(job), _encode(slices)
        headers = self.seals.headers(subject, "", body)
        return await publish_deduplicated(self.nc, subject, body, msg_id, headers)

    async def _queue(self, job: str, start: int, slices: list[list[Any]]) -> None:
        subject = self.names.work(job)
        limit = anyio.Semaphore(_QUEUE_CONCURRENCY)

        async def one(index: int, args: list[Any]) -> None:
            async with limit:
                body = call_body(args)
                headers = {
                    SLICE_HEADER: str(index),
                    **self.seals.headers(subject, str(index), body),
                }
                await publish_deduplicated(self.nc, subject, body, f"{job}.{index}", headers)

        async with anyio.create_task_group() as tg:
            for offset, args in enumerate(slices):
                tg.start_soon(one, start + offset, args)

    async def puller(self, job: str, ack_wait: float) -> Puller:
        """A puller of ``job``'s queue, made first if missing (slices come back
        ``ack_wait`` seconds after they were taken if not acknowledged)."""
        durable = f"job_{job}"
        if not await consumer_exists(self.nc, self.names.work_stream, durable):
            await self._open_queue(job, ack_wait)
        return await Puller.bind(self.nc, self.names.work_stream, durable)

    async def counts(self, job: str) -> tuple[int, int]:
        """``(queued, in flight)`` slices of ``job``."""
        return await consumer_counts(self.nc, self.names.work_stream, f"job_{job}")

    async def drop_work(self, job: str) -> None:
        """Forget ``job``'s queue: its consumer and any slice still waiting."""
        await delete_consumer(self.nc, self.names.work_stream, f"job_{job}")
        await purge_subject(self.nc, self.names.work_stream, self.names.work(job))

    # -- results -------------------------------------------------------------------------

    async def save(self, job: str, result: SliceResult) -> bool:
        """Store ``result`` unless its slice has one (sealed: one this actor stored; a
        message someone else put there first is written over); returns whether this one
        was stored."""
        subject, body = self.names.result(job, result.index), _encode(result)
        status = str(result.status)
        headers = {STATUS_HEADER: status, **self.seals.headers(subject, status, body)}
        if await publish_once(self.nc, subject, body, headers):
            return True
        there = await last_message(self.nc, self.names.record_stream, subject)
        if there is None or self.seals.check(
            subject, (there.headers or {}).get(STATUS_HEADER, ""), there.headers, there.data
        ):
            return False
        return await publish_once(self.nc, subject, body, headers, after=there.seq or 0)

    async def result(self, job: str, index: int) -> SliceResult | None:
        subject = self.names.result(job, index)
        stored = await last_message(self.nc, self.names.record_stream, subject)
        if stored is None or not stored.data:
            return None
        status = (stored.headers or {}).get(STATUS_HEADER, "")
        if not self.seals.check(subject, status, stored.headers, stored.data):
            return None
        return _result.decode(stored.data)

    async def follow_results(self) -> AsyncIterator[tuple[str, int, int, bool]]:
        """``(job, index, status, caught_up)`` for every result stored, then for each new
        one, until cancelled (bodies are not fetched)."""
        prefix = len(self.names.prefix) + len(".result.")
        async for msg in stream_messages(
            self.nc,
            self.names.record_stream,
            self.names.result("*", "*"),
            follow=True,
            headers_only=True,
        ):
            job, _, index = msg.subject[prefix:].partition(".")
            status = (msg.headers or {}).get(STATUS_HEADER, "")
            if self.seals.check(msg.subject, status, msg.headers, None):
                yield job, int(index), int(status), _caught_up(msg)


def _caught_up(msg: Msg) -> bool:
    return msg.metadata.num_pending == 0


def _without(record: JobRecord, start: int) -> JobRecord | None:
    pending = [b for b in record.pending if b.start != start]
    if len(pending) == len(record.pending):
        return None
    return msgspec.structs.replace(record, pending=pending)
