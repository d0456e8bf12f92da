"""Admission: the bounded queue between a replica's reader and its workers.

Accepted calls wait here, highest priority first and FIFO among equals, until a worker
takes one or the deadline sweeper takes it out to answer 408. Workers and the sweeper
share no counter: a worker that wakes to an empty queue (the sweeper was quicker) just
waits again. At most one waiting worker is woken at a time, and a worker that takes a
call while others wait wakes the next: calls that arrive together are taken by one
worker after another as long as their handlers do not wait (each runs to its reply in
one step), and a handler that waits lets the next worker take the next call. Waking one
worker per call instead woke all but one of them to an empty queue. An earlier version
counted calls with a semaphore; a sweep that ran between a hand-off and the woken
worker's pop made the sweeper raise ``WouldBlock`` and the workers pop an empty heap,
which took the replica down under a burst.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

import anyio

from ..bus import Unavailable
from .actor import Call

__all__ = ["Admission"]


class Admission:
    """Calls waiting for a worker: at most ``max_queue`` (503 beyond)."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._heap: list[tuple[float, int, Call]] = []
        self._seq = itertools.count()
        self._waiters: deque[anyio.Event] = deque()
        self._woken = False
        """Whether a worker has been woken and has not taken a call yet."""

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, call: Call) -> None:
        """Queue ``call``; raises :class:`Unavailable` (503) when the queue is full."""
        if len(self._heap) >= self.max_queue:
            raise Unavailable("overloaded: too many calls waiting, retry later")
        heapq.heappush(self._heap, (-call.priority, next(self._seq), call))
        self._wake_one()

    def _wake_one(self) -> None:
        if self._waiters and not self._woken:
            self._woken = True
            self._waiters.popleft().set()

    async def get(self) -> Call:
        """The most urgent call, waiting for one if there is none."""
        while not self._heap:
            woken = anyio.Event()
            self._waiters.append(woken)
            try:
                await woken.wait()
            except BaseException:
                if not woken.is_set():
                    self._waiters.remove(woken)
                else:
                    self._woken = False
                    if self._heap:  # pass the wake-up on: a call is waiting for a worker
                        self._wake_one()
                raise
            self._woken = False
        call = heapq.heappop(self._heap)[2]
        if self._heap:  # more wait: the next worker takes one if this handler waits
            self._wake_one()
        return call

    def take_expired(self, now: float) -> list[Call]:
        """Remove and return the queued calls whose deadline has passed."""
        if not self._heap:
            return []
        expired = [item[2] for item in self._heap if item[2].deadline <= now]
        if expired:
            self._heap = [item for item in self._heap if item[2].deadline > now]
            heapq.heapify(self._heap)
        return expired

    def take_all(self) -> list[Call]:
        """Remove and return every queued call (a stopping replica answers them)."""
        calls = [item[2] for item in self._heap]
        self._heap.clear()
        return calls
