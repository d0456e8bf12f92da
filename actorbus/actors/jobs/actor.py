"""The jobs actor: open jobs (dcp-rest's model) on JetStream.

A job calls one function (``work``, ``actor/fn``) once per slice (a slice is the
argument list of one call). Slices can be added while it runs until it is closed; it
finishes when every slice has a result. Its owner is the key that signed ``submit``;
only the owner or an admin may add to it, read it or cancel it. Each slice runs *as the
owner*, with the delegation the owner signed for this job (:mod:`actorbus.bus.delegation`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import anyio.abc
import msgspec

from ...bus import ActorError, BadRequest, Forbidden, NoResponders, NotFound, Unavailable
from ...bus.delegation import (
    MAX_DELEGATION_SECONDS,
    Delegation,
    check_job_id,
    split_work,
    verify_delegation,
)
from ...bus.errors import NoSuchActor
from ...bus.jetstream import when_ready
from ...bus.ranges import page_of, parse_ranges
from ...bus.rights import JOBS
from ...bus.subjects import JobsNames
from ...bus.tickets import host_ticket
from ...bus.workqueue import open_queue
from ...host import Actor, current_call, endpoint
from ...host.pages import MAX_PAGE, check_limit
from ...host.replica import host_key
from .model import (
    ACTIVE,
    Batch,
    JobOptions,
    JobRecord,
    JobStatus,
    SliceResult,
    job_cursor,
)
from .runner import Runner
from .store import JobStore

__all__ = ["Jobs"]

log = logging.getLogger("actorbus.jobs")

_READ_CONCURRENCY = 64
_ASK_WAIT = 4.0
"""Seconds the policy actor may take to make a job's queue."""
_MIN_LIFE = 10.0
"""Seconds a delegation must still be valid for when a job is submitted."""


class Jobs(Actor):
    """Open jobs: submit a function over slices, add slices while it runs, read results by
    index range, follow its status, cancel it."""

    name = "jobs"
    # Every job call is checked against the job's owner here, and every slice against the
    # owner's policy at its target, quota included: this actor's own calls are free.
    quotas = False
    rights = JOBS

    _store: JobStore
    _runner: Runner

    async def on_start(self) -> None:
        name = self.name or "jobs"
        self._store = await when_ready(
            lambda: JobStore.open(self.nc, name, self.settings, self.key, self._open_queue),
            "the jobs streams",
            wait=self.settings.start_wait,
        )
        self._runner = Runner(self._store, self.client, self.key, self.nc, self.settings)

    async def _open_queue(self, job: str, ack_wait: float) -> None:
        """Have the policy actor make ``job``'s queue, as this host's ticket lets it: a
        ticket grants no consumer's creation (its config, how many pulls it holds waiting
        among it, would be this host's). On a NATS with no policy actor, make it here."""
        name = self.name or "jobs"
        names = JobsNames(name)
        policy = self.__actorbus_policy__
        if policy is None or not policy.enforced:  # no policy here: asking it waits in vain
            await open_queue(
                self.nc, names.work_stream, f"job_{job}", names.work(job), ack_wait=ack_wait
            )
            return
        ticket = host_ticket(host_key(self.settings), name, JOBS, self.key.address)
        try:
            await self.client.request(
                self.settings.policy, "open_queue", [ticket, job, ack_wait], timeout=_ASK_WAIT
            )
        except (NoResponders, NoSuchActor):
            await open_queue(
                self.nc, names.work_stream, f"job_{job}", names.work(job), ack_wait=ack_wait
            )
        except ActorError as exc:
            if isinstance(exc, Unavailable):
                raise
            raise Unavailable(
                f"the policy did not make the queue of job {job}: {exc.message}"
            ) from None

    def figures(self) -> dict[str, float]:
        """Jobs by state, and their slices: done, failed and left to run (of the jobs still
        running), and done per second over the last minute. Every replica of the jobs
        actor sees every job, so these are the same on each (take one, or the max)."""
        runner = getattr(self, "_runner", None)
        if runner is None:
            return {}
        counted: dict[str, float] = {
            f"jobs_{state}": 0 for state in ("open", "closed", "finished", "cancelled")
        }
        done = failed = left = rate = 0.0
        for record in runner.records.values():
            counted[f"jobs_{record.state}"] += 1
            tally = runner.tally(record.id)
            done, failed = done + tally.done, failed + tally.failed
            if record.state in ACTIVE:
                left += max(record.total - tally.count, 0)
                rate += tally.rate()
        counted |= {
            "job_slices_done": done,
            "job_slices_failed": failed,
            "job_slices_left": left,
            "job_slices_per_second": rate,
        }
        return counted

    async def on_run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._stop_revoked_jobs)
            await self._runner.run(task_status=task_status)
            tg.cancel_scope.cancel()

    async def _stop_revoked_jobs(self) -> None:
        """Cancel, each second, the active jobs whose owner's token was revoked (its
        slices would be refused anyway: none is left queued)."""
        while True:
            await anyio.sleep(1.0)
            policy = self.__actorbus_policy__
            revoked = policy.state.revoked if policy is not None else set()
            for record in list(self._runner.records.values()):
                if record.state in ACTIVE and record.owner in revoked:
                    try:
                        await self._stop(record)
                    except ActorError as exc:  # tried again in a second
                        log.warning("jobs: stopping %s (owner revoked): %s", record.id, exc)

    # -- the API -------------------------------------------------------------------------

    async def submit(
        self,
        work: str,
        delegation: Delegation,
        slices: list[list[Any]] | None = None,
        options: JobOptions | None = None,
    ) -> str:
        """Start a job calling ``work`` (``actor/fn``) once per slice, as you, with the
        ``delegation`` you signed for it (its ``job`` is the job's id); ``slices`` now or
        later. Returns the job id."""
        call = current_call()
        owner = call.caller
        actor, _ = split_work(work)
        await self.client.check_named(actor)  # a mistyped name: refused now, not retried
        if delegation.work != work:
            raise BadRequest(f"the delegation is for {delegation.work}, not {work}")
        self._check_delegation(owner, delegation, fresh=True)
        await self._check_may_call(owner, work)
        record = JobRecord(
            id=delegation.job,
            owner=owner,
            work=work,
            delegation=delegation,
            options=options or JobOptions(),
            created=time.time(),
            trace=call.trace,
        )
        if not await self._store.create(record):
            raise BadRequest(f"job {delegation.job} exists: a delegation serves one job")
        if slices:
            await self._store.add(record.id, slices, _open_only)
        return record.id

    async def add_slices(
        self, job: str, slices: list[list[Any]], delegation: Delegation | None = None
    ) -> list[int]:
        """Add ``slices`` to an open job; returns ``[first, last]``, the indices they got.
        A new ``delegation`` for the same job and work (a later expiry) replaces its own."""
        record = await self._owned(job)
        if not slices:
            raise BadRequest("no slices to add")
        if delegation is not None:
            await self._renew(record, delegation)
        first, last = await self._store.add(record.id, slices, _open_only)
        return [first, last]

    async def close(self, job: str) -> JobStatus:
        """No more slices: the job finishes once each has a result."""
        record = await self._owned(job)

        def close(r: JobRecord) -> JobRecord | None:
            if r.state != "open":
                return None
            return msgspec.structs.replace(r, state="closed", closed=time.time())

        record = await self._store.change(record.id, close)
        self._runner.records[record.id] = record
        return await self._status(record)

    @endpoint(idempotent=True)
    async def status(self, job: str) -> JobStatus:
        """State, total, done, failed, in flight, queued, rate, eta and times."""
        return await self._status(await self._owned(job))

    @endpoint(idempotent=True)
    async def results(self, job: str, ranges: str = "", page: int = 0) -> list[SliceResult]:
        """The results among slice indices ``ranges`` (``"1-10,33-35"``; empty: all), page
        ``page`` (1000 indices a page, from 0), in index order; slices without a result
        yet are left out."""
        record = await self._owned(job)
        if page < 0:
            raise BadRequest("page must be >= 0")
        indices = page_of(parse_ranges(ranges, record.total), page)
        tally = self._runner.tally(record.id)
        if self._runner.caught_up:
            seen = tally.seen
            indices = [i for i in indices if i < len(seen) and seen[i]]
        found: list[SliceResult] = []
        limit = anyio.Semaphore(_READ_CONCURRENCY)

        async def read(index: int) -> None:
            async with limit:
                result = await self._store.result(record.id, index)
            if result is not None:
                found.append(result)

        async with anyio.create_task_group() as tg:
            for index in indices:
                tg.start_soon(read, index)
        return sorted(found, key=lambda r: r.index)

    async def cancel(self, job: str) -> JobStatus:
        """Stop the job: no slice starts any more, running ones are abandoned."""
        return await self._status(await self._stop(await self._owned(job)))

    async def _stop(self, record: JobRecord) -> JobRecord:
        """Cancel ``record``'s job (if still active) and drop its queued slices."""

        def cancel(r: JobRecord) -> JobRecord | None:
            if r.state not in ACTIVE:
                return None
            return msgspec.structs.replace(r, state="cancelled", finished=time.time())

        record = await self._store.change(record.id, cancel)
        if record.state == "cancelled":
            await self._store.drop_work(record.id)
        return record

    @endpoint(idempotent=True)
    async def jobs(self, limit: int = MAX_PAGE, after: str = "") -> list[JobStatus]:
        """Your jobs, oldest first (a page: at most ``limit``, those after the job whose
        ``cursor`` is ``after``)."""
        check_limit(limit)
        caller = current_call().caller
        mine = sorted(
            (job_cursor(r.created, r.id), r)
            for r in self._runner.records.values()
            if r.owner == caller and job_cursor(r.created, r.id) > after
        )
        return [await self._status(r) for _, r in mine[:limit]]

    # -- checks --------------------------------------------------------------------------

    def _check_delegation(self, owner: str, delegation: Delegation, *, fresh: bool) -> None:
        check_job_id(delegation.job)
        if delegation.delegate != self.address:
            raise BadRequest(f"the delegation is for {delegation.delegate}, not this actor")
        now_ms = int(time.time() * 1000)
        verify_delegation(owner, delegation, now_ms)
        if fresh and delegation.expires < now_ms + _MIN_LIFE * 1000:
            raise BadRequest(f"the delegation expires in less than {_MIN_LIFE:g}s")
        if delegation.expires > now_ms + (MAX_DELEGATION_SECONDS + 60) * 1000:
            raise BadRequest(f"a delegation lasts at most {MAX_DELEGATION_SECONDS // 86400} days")

    async def _check_may_call(self, owner: str, work: str) -> None:
        """Refuse at once a job whose every slice would be refused (its target decides each
        call again: a role changed later applies to the next slice)."""
        policy = self.__actorbus_policy__
        if policy is None or not policy.enforced:
            return
        actor, fn = split_work(work)
        entries = await self.client.entries(actor)
        allow = frozenset(entries[0].allow_fns) if entries else frozenset()
        deny = frozenset(entries[0].deny_fns) if entries else frozenset()
        await policy.learn(owner)
        decision = policy.state.decide(owner, actor, fn, allow, deny)
        if not decision.allowed:
            raise Forbidden(f"you may not call {work}: {decision.reason}")

    async def _renew(self, record: JobRecord, delegation: Delegation) -> None:
        if (delegation.job, delegation.work) != (record.id, record.work):
            raise BadRequest(f"the delegation is not for job {record.id} and {record.work}")
        self._check_delegation(record.owner, delegation, fresh=True)

        def renew(r: JobRecord) -> JobRecord | None:
            if delegation.expires <= r.delegation.expires:
                return None
            return msgspec.structs.replace(r, delegation=delegation)

        await self._store.change(record.id, renew)

    async def _owned(self, job: str) -> JobRecord:
        """The job, if the caller owns it or is an admin."""
        record = await self._store.get(check_job_id(job))
        if record is None:
            raise NotFound(f"no job {job}")
        caller = current_call().caller
        policy = self.__actorbus_policy__
        if caller != record.owner and not (policy and caller in policy.state.admins):
            raise Forbidden(f"job {job} is not yours")
        return record

    async def _status(self, record: JobRecord) -> JobStatus:
        tally = self._runner.tally(record.id)
        queued, in_flight = 0, 0
        if record.state in ACTIVE:
            queued, in_flight = await self._store.counts(record.id)
        rate = tally.rate()
        left = max(record.total - tally.count, 0)
        eta = 0.0 if not left else (left / rate if rate else None)
        return JobStatus(
            id=record.id,
            work=record.work,
            owner=record.owner,
            state=record.state,
            total=record.total,
            done=tally.done,
            failed=tally.failed,
            in_flight=in_flight,
            queued=queued,
            rate=round(rate, 2),
            eta=None if eta is None else round(eta, 2),
            created=record.created,
            closed=record.closed,
            finished=record.finished,
            cursor=job_cursor(record.created, record.id),
        )


def _open_only(record: JobRecord, batch: Batch) -> None:
    if record.state != "open":
        raise BadRequest(f"job {record.id} is {record.state}: no more slices")
