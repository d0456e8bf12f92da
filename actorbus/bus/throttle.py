"""Log lines that a flood cannot turn into a weapon: a few per reason, then a count.

Anything a remote party can provoke (a refused request, a dropped message) is logged
through a :class:`LogThrottle`: the first ``burst`` lines per reason in each ``interval``
are written as they come, the rest are only counted, and one summary line per interval
says how many were held back and why. Reasons are a small fixed set chosen by our code
(a status code, an exception class), never text from the caller, so the throttle's own
memory stays bounded too.

A traceback logged here keeps what a developer needs and bounds what a caller may have
put in it: every frame (file, line, function, source line) and exception type whole, and
each exception's message (``int('…')`` quotes its argument) as one escaped line of at most
:data:`MESSAGE_LIMIT` characters. No local variable is ever logged.
"""

from __future__ import annotations

import logging
import time
import traceback

from .errors import printable

__all__ = ["MESSAGE_LIMIT", "LogThrottle", "traceback_text"]

MESSAGE_LIMIT = 200

_CAUSE = "\n\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\n\nDuring handling of the above exception, another exception occurred:\n\n"


def traceback_text(exc: BaseException) -> str:
    """``exc``'s traceback as Python prints it, with each message cut (see above)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        cause = current.__cause__
        current = cause if cause or current.__suppress_context__ else current.__context__
    text = ""
    for earlier, later in zip(reversed(chain), [*reversed(chain[:-1]), None], strict=True):
        kind = type(earlier)
        try:
            message = printable(str(earlier), MESSAGE_LIMIT)
        except Exception:  # a __str__ that fails: the type still says enough
            message = "<message not printable>"
        text += "Traceback (most recent call last):\n"
        text += "".join(traceback.format_tb(earlier.__traceback__))
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        text += name + (f": {message}" if message else "")
        if later is not None:
            text += _CAUSE if later.__cause__ is earlier else _CONTEXT
    return text


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
        error_id: str = "",
        trace_id: str = "",
    ) -> bool:
        """Log ``message % args`` (and ``exc_info``'s :func:`traceback_text`; ``error_id``
        and ``trace_id`` as the record's own fields, for JSON logs) unless ``reason``
        already had ``burst`` lines this interval; returns whether it was written."""
        if not self._log.isEnabledFor(level):
            return False
        if time.monotonic() >= self._window_end:
            self.flush()
        count = self._counts.get(reason, 0) + 1
        self._counts[reason] = count
        if count > self.burst:
            return False
        if exc_info is not None:
            message, args = f"{message}\n%s", (*args, traceback_text(exc_info))
        fields = {"error_id": error_id, "trace_id": trace_id}
        self._log.log(level, message, *args, extra={k: v for k, v in fields.items() if v})
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
