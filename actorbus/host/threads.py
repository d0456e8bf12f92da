"""Sync handlers in worker threads, and what happens to a thread that will not stop.

Python cannot stop a thread. A sync handler that runs past its deadline is abandoned: its
caller gets a 408 and its worker slot goes back to the pipeline at once, while the thread
runs on and is counted as *stuck*. That keeps the replica serving, but each stuck thread
is a thread the replica cannot get back, so the count is bounded: once ``limit`` threads
have each been stuck for ``stuck_timeout`` seconds, :meth:`SyncRunner.failure` says so
and the replica drains and exits for its supervisor to restart it. At most ``limit``
handler threads run at once and at most ``limit`` more are stuck: with that many stuck, a
sync call is refused (503) rather than given another thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from ..bus import Unavailable

__all__ = ["SyncRunner"]

T = TypeVar("T")


class _Run:
    """One handler run, shared by the event loop and its thread (guarded by the lock)."""

    __slots__ = ("abandoned", "done", "started")

    def __init__(self) -> None:
        self.started = False
        self.done = False
        self.abandoned = False


class SyncRunner:
    """Runs sync callables in threads, ``limit`` at once, and tracks abandoned ones."""

    def __init__(self, limit: int, stuck_timeout: float) -> None:
        self.limit = limit
        self.stuck_timeout = stuck_timeout
        self._limiter = anyio.CapacityLimiter(limit)
        self._lock = threading.Lock()
        self._stuck: dict[_Run, tuple[str, float]] = {}

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
        run = _Run()

        def target() -> Any:
            with self._lock:
                if run.abandoned:  # cancelled before the thread picked it up: never run
                    return None
                run.started = True
            try:
                return func()
            finally:
                with self._lock:
                    run.done = True
                    self._stuck.pop(run, None)

        try:
            result: T = await anyio.to_thread.run_sync(
                target, abandon_on_cancel=True, limiter=self._limiter
            )
        except BaseException:
            with self._lock:
                run.abandoned = True
                if run.started and not run.done:
                    self._stuck[run] = (name, time.monotonic())
            raise
        return result

    def failure(self, now: float) -> str:
        """Why the replica should restart (every thread slot stuck for ``stuck_timeout``),
        or ``""``."""
        with self._lock:
            long_stuck = [
                n for n, since in self._stuck.values() if now - since > self.stuck_timeout
            ]
        if len(long_stuck) < self.limit:
            return ""
        names = ", ".join(sorted(set(long_stuck)))
        return (
            f"{len(long_stuck)} sync handler threads ({names}) are stuck more than "
            f"{self.stuck_timeout:g}s past their deadline; threads cannot be stopped, so "
            "this replica exits to be restarted"
        )
