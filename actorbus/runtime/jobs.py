"""A job of the jobs actor, from Python: what ``await client.submit(...)`` returns."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio

from ..bus import BadRequest, Keypair, ReplyTimeout, Unavailable
from ..bus.delegation import MAX_DELEGATION_SECONDS, Delegation, sign_delegation, split_work
from ..bus.ranges import PAGE_SIZE, page_of, parse_ranges

if TYPE_CHECKING:
    from .client import Client

__all__ = ["DEFAULT_JOB_TTL", "ENDED", "Job", "delegate_job"]

DEFAULT_JOB_TTL = 24 * 3600.0
"""Seconds a job's delegation lasts unless told otherwise."""
ENDED = frozenset({"finished", "cancelled"})


async def delegate_job(
    client: Client, key: Keypair, work: str, ttl: float, job: str | None = None
) -> Delegation:
    """A new job's delegation: ``key`` lets the jobs actor (found through ``client``) call
    ``work`` as ``key`` for job ``job`` (a fresh id by default) for ``ttl`` seconds.
    Raises :class:`Unavailable` if no jobs actor runs."""
    split_work(work)
    if not 0 < ttl <= MAX_DELEGATION_SECONDS:
        raise BadRequest(f"ttl must be in (0, {MAX_DELEGATION_SECONDS}] seconds")
    name = client.settings.jobs
    addresses = (await client.known(name)).addresses
    if not addresses:
        raise Unavailable(f"no jobs actor {name!r} is running (`actor up` starts one)")
    expires = int((time.time() + ttl) * 1000)
    job = job or secrets.token_hex(12)
    return sign_delegation(key, min(addresses), work, job, expires)


class Job:
    """A handle on one job of the jobs actor: add to it, follow it, read it, cancel it."""

    def __init__(self, client: Client, id: str) -> None:
        self.client = client
        self.id = id

    def __repr__(self) -> str:
        return f"<job {self.id}>"

    async def _call(self, fn: str, *args: Any) -> Any:
        return await self.client.request(self.client.settings.jobs, fn, list(args))

    async def add(self, slices: list[list[Any]]) -> tuple[int, int]:
        """Add slices; returns the first and last index they got."""
        first, last = await self._call("add_slices", self.id, slices)
        return first, last

    async def close(self) -> dict[str, Any]:
        """No more slices: the job finishes once each has a result."""
        status: dict[str, Any] = await self._call("close", self.id)
        return status

    async def cancel(self) -> dict[str, Any]:
        status: dict[str, Any] = await self._call("cancel", self.id)
        return status

    async def status(self) -> dict[str, Any]:
        """State, total, done, failed, in flight, queued, rate, eta and times."""
        status: dict[str, Any] = await self._call("status", self.id)
        return status

    async def wait(self, poll: float = 0.25) -> dict[str, Any]:
        """Wait until the job is finished or cancelled; returns its last status. A status
        request that gets no answer (NATS or the jobs actor restarting) is asked again."""
        while True:
            try:
                status = await self.status()
            except (Unavailable, ReplyTimeout):  # NATS or the jobs actor restarting
                await anyio.sleep(poll)
                continue
            if status["state"] in ENDED:
                return status
            await anyio.sleep(poll)

    async def page(self, ranges: str = "", page: int = 0) -> list[dict[str, Any]]:
        """One page (1000 indices) of the results among ``ranges``, in index order."""
        results: list[dict[str, Any]] = await self._call("results", self.id, ranges, page)
        return results

    async def results(
        self, ranges: str = "", *, poll: float = 0.25
    ) -> AsyncIterator[dict[str, Any]]:
        """Each result (``{index, status, value | error}``) in index order.

        Without ``ranges`` it follows the job: it yields results as they come in order
        and ends when the job has ended (a cancelled job's missing slices are skipped).
        With ``ranges`` it yields the results stored now among them.
        """
        if ranges:
            spans = parse_ranges(ranges, (await self.status())["total"])
            count = sum(last - first + 1 for first, last in spans)
            for page in range((count + PAGE_SIZE - 1) // PAGE_SIZE):
                if page_of(spans, page):
                    for result in await self.page(ranges, page):
                        yield result
            return
        next_index = 1
        while True:
            status = await self.status()
            ended, total = status["state"] in ENDED, status["total"]
            while next_index <= total:
                last = min(total, next_index + PAGE_SIZE - 1)
                got = await self.page(f"{next_index}-{last}")
                if ended:  # everything there is, is stored
                    for result in got:
                        yield result
                    next_index = last + 1
                    continue
                for result in got:
                    if result["index"] != next_index:
                        break
                    yield result
                    next_index += 1
                if next_index <= last:
                    break  # a gap: wait for it
            if ended:
                return
            await anyio.sleep(poll)
