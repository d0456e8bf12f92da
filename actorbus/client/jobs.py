"""A job of the jobs actor, from Python: what ``await client.submit(...)`` returns.

A :class:`Job` is handed the one thing it needs of its client, a way to call the jobs
actor (:data:`JobsCall`), so this module knows nothing of the client that makes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

from ..bus import ReplyTimeout, Unavailable
from ..bus.ranges import PAGE_SIZE, page_of, parse_ranges

__all__ = ["DEFAULT_JOB_TTL", "ENDED", "Job", "JobsCall"]

DEFAULT_JOB_TTL = 24 * 3600.0
"""Seconds a job's delegation lasts unless told otherwise."""
ENDED = frozenset({"finished", "cancelled"})

JobsCall = Callable[[str, list[Any]], Awaitable[Any]]
"""Calls the jobs actor's function (first) with positional arguments (second)."""


class Job:
    """A handle on one job of the jobs actor: add to it, follow it, read it, cancel it."""

    def __init__(self, call: JobsCall, id: str) -> None:
        self._call_jobs = call
        self.id = id

    def __repr__(self) -> str:
        return f"<job {self.id}>"

    async def _call(self, fn: str, *args: Any) -> Any:
        return await self._call_jobs(fn, list(args))

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
