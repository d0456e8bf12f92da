"""Sync handlers in worker threads, and what happens to a thread that will not stop.

The hand-off is a pool of our own: a call is a job on a queue that a waiting thread takes
(a new thread starts when none waits, up to ``limit``; one that waits 10 s ends), and
a finished job's result goes back to the loop with the results of every other job that
finished meanwhile, in one wake-up of the loop. ``anyio.to_thread.run_sync`` cost a
replica 37-60 µs of CPU per call at 64 calls in flight, ``loop.run_in_executor`` 23 µs,
this pool 4 µs (``python bench/handoff.py``), because under load a wake-up serves many
calls. A ``def`` handler that says it is quick (``@endpoint(inline=True)``) runs on the
loop instead: no hand-off at all, and every other call waits while it runs.

Python cannot stop a thread. A sync handler that runs past its deadline is abandoned: its
caller gets a 408 and its worker slot goes back to the pipeline at once, while the thread
runs on and is counted as *stuck* (another thread may start in its place). That keeps the
replica serving, but each stuck thread is a thread the replica cannot get back, so the
count is bounded: once ``limit`` threads have each been stuck for ``stuck_timeout``
seconds, :meth:`SyncRunner.failure` says so and the replica drains and exits for its
supervisor to restart it. At most ``limit`` handler threads run at once and at most
``limit`` more are stuck: with that many stuck, a sync call is refused (503) rather than
given another thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from ..bus import Unavailable

__all__ = ["SyncRunner"]

T = TypeVar("T")

IDLE_SECONDS: Final = 10.0
"""How long a thread with no job waits for one before it ends."""


class _Job:
    """One handler run, shared by the event loop and its thread (guarded by the lock)."""

    __slots__ = ("abandoned", "context", "done", "func", "future", "name", "started")

    def __init__(self, name: str, func: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        self.name = name
        self.func = func
        self.context = contextvars.copy_context()  # current_call() works in the thread
        self.future = future
        self.started = False
        self.done = False
        self.abandoned = False


class SyncRunner:
    """Runs sync callables in threads, ``limit`` at once, and tracks abandoned ones."""

    def __init__(self, limit: int, stuck_timeout: float) -> None:
        self.limit = limit
        self.stuck_timeout = stuck_timeout
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._serving = 0
        """Threads that take jobs (stuck ones are not counted)."""
        self._waiting = 0
        """Of those, the ones waiting for a job."""
        self._queued = 0
        """Jobs put on the queue that no thread has taken yet."""
        self._stuck: dict[_Job, float] = {}
        self._finished: list[tuple[_Job, bool, Any]] = []
        """Results not handed to the loop yet."""
        self._waking = False
        """Whether the loop has been asked to take the finished results."""
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def stuck(self) -> int:
        """Threads still running a call that was abandoned at its deadline."""
        return len(self._stuck)

    async def run(self, name: str, func: Callable[[], T]) -> T:
        """``func()`` in a worker thread; on cancellation return at once and leave the
        thread to finish (counted as stuck until it does). Raises :class:`Unavailable` while
        ``limit`` threads are stuck."""
        if len(self._stuck) >= self.limit:
            raise Unavailable(
                f"{len(self._stuck)} sync handler threads are stuck past their deadline; "
                "retry later"
            )
        loop = self._loop = asyncio.get_running_loop()
        job = _Job(name, func, loop.create_future())
        with self._lock:
            self._queued += 1
            self._jobs.put(job)
        self._start_if_short()
        try:
            result: T = await job.future
        except BaseException:
            with self._lock:
                job.abandoned = True
                stuck = job.started and not job.done
                if stuck:
                    self._stuck[job] = time.monotonic()
                    self._serving -= 1
            if stuck:
                self._start_if_short()  # another thread takes its place
            raise
        return result

    def _start_if_short(self) -> None:
        """Start a thread if jobs wait that no waiting thread will take, up to ``limit``."""
        with self._lock:
            start = self._queued > self._waiting and self._serving < self.limit
            if start:
                self._serving += 1
        if start:
            threading.Thread(target=self._work, name="actorbus handler", daemon=True).start()

    def close(self) -> None:
        """End the threads waiting for a job (a stopping replica: no job comes any more)."""
        with self._lock:
            for _ in range(self._waiting):
                self._jobs.put(None)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._waiting += 1
            try:
                job = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    self._waiting -= 1
                    if self._queued <= self._waiting:  # the other waiters take every job
                        self._serving -= 1
                        return
                continue
            with self._lock:
                self._waiting -= 1
                if job is None:
                    self._serving -= 1
                    return
                self._queued -= 1
            if self._run(job):
                return

    def _run(self, job: _Job) -> bool:
        """Run ``job`` and hand its result to the loop; whether this thread should end
        (it was stuck, and others took its place meanwhile)."""
        with self._lock:
            skip = job.abandoned  # cancelled before a thread picked it up: never run
            job.started = True
        ok, result = True, None
        if not skip:
            try:
                result = job.context.run(job.func)
            except BaseException as exc:
                ok, result = False, exc
        with self._lock:
            job.done = True
            end = False
            if self._stuck.pop(job, None) is not None:
                end = self._serving >= self.limit
                if not end:
                    self._serving += 1
            if job.abandoned:
                return end
            self._finished.append((job, ok, result))
            wake, self._waking = not self._waking, True
        if wake:
            self._wake()
        return end

    def _wake(self) -> None:
        loop = self._loop
        try:
            assert loop is not None
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody waits for these results
            with self._lock:
                self._finished.clear()
                self._waking = False

    def _deliver(self) -> None:
        """On the loop: hand every finished result to its caller."""
        with self._lock:
            finished, self._finished = self._finished, []
            self._waking = False
        for job, ok, result in finished:
            if job.future.done():  # its caller gave up (cancelled)
                continue
            if ok:
                job.future.set_result(result)
            else:
                job.future.set_exception(result)

    def failure(self, now: float) -> str:
        """Why the replica should restart (every thread slot stuck for ``stuck_timeout``),
        or ``""``."""
        with self._lock:
            long_stuck = [
                job.name for job, since in self._stuck.items() if now - since > self.stuck_timeout
            ]
        if len(long_stuck) < self.limit:
            return ""
        names = ", ".join(sorted(set(long_stuck)))
        return (
            f"{len(long_stuck)} sync handler threads ({names}) are stuck more than "
            f"{self.stuck_timeout:g}s past their deadline; threads cannot be stopped, so "
            "this replica exits to be restarted"
        )
