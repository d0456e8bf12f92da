"""Log lines that a flood cannot turn into a weapon: a few per reason, then a count.

Anything a remote party can provoke (a refused request, a dropped message) is logged
through a :class:`LogThrottle`: the first ``burst`` lines per reason in each ``interval``
are written as they come, the rest are only counted, and one summary line per interval
says how many were held back and why. Reasons are a small fixed set chosen by our code
(a status code, an exception class), never text from the caller, so the throttle's own
memory stays bounded too.
"""

from __future__ import annotations

import logging
import time

__all__ = ["LogThrottle"]


class LogThrottle:
    """At most ``burst`` records per reason per ``interval`` seconds on ``log``."""

    def __init__(self, log: logging.Logger, *, burst: int = 5, interval: float = 10.0) -> None:
        self._log = log
        self.burst = burst
        self.interval = interval
        self._counts: dict[str, int] = {}
        self._window_end = time.monotonic() + interval

    def log(
        self,
        level: int,
        reason: str,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log ``message % args`` unless ``reason`` already had ``burst`` lines this interval;
        returns whether it was written."""
        if not self._log.isEnabledFor(level):
            return False
        if time.monotonic() >= self._window_end:
            self.flush()
        count = self._counts.get(reason, 0) + 1
        self._counts[reason] = count
        if count > self.burst:
            return False
        self._log.log(level, message, *args, exc_info=exc_info)
        return True

    def flush(self, *, force: bool = False) -> None:
        """End the interval if it is over (or ``force``): one summary line for what was held
        back, if anything was.

        Called by :meth:`log`, periodically by an owner that wants the summary to appear
        even when the flood has stopped, and with ``force`` when the owner stops.
        """
        now = time.monotonic()
        if now < self._window_end and not force:
            return
        held = {reason: n - self.burst for reason, n in self._counts.items() if n > self.burst}
        if held:
            self._log.warning(
                "%d more lines held back in the last %.0fs: %s",
                sum(held.values()),
                now - (self._window_end - self.interval),
                ", ".join(f"{reason} x {n}" for reason, n in sorted(held.items())),
            )
        self._counts.clear()
        self._window_end = now + self.interval
