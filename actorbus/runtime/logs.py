"""Replica logs on JetStream: every line a replica writes, readable from any machine.

The supervisor reads each replica's output (its log records, and whatever the actor's
code prints) and publishes each line on ``actorbus.logs.<node>.<replica>.<actor>``: node
and replica index are one token each and the actor name (which may hold dots) comes last,
so a filter can never mistake one for another. The ``ACTOR_LOGS`` stream keeps them,
bounded by bytes and age, the oldest dropped first. Shipping never waits: lines go out
as core publishes from a bounded queue, and a replica that writes more than
``max_rate`` lines a second has the excess counted and reported in one line.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import msgspec

from ..bus import NATS, ActorError, LogThrottle, publish
from ..bus.jetstream import ensure_stream, stream_messages
from ..bus.subjects import check_name
from .settings import Settings

__all__ = ["LOG_STREAM", "LogLine", "LogShipper", "ensure_logs", "read_logs"]

log = logging.getLogger("actorbus.logs")

LOG_STREAM = "ACTOR_LOGS"
_PREFIX = "actorbus.logs"
_QUEUE = 10_000
_encode = msgspec.json.Encoder().encode


class LogLine(msgspec.Struct, frozen=True):
    """One line a replica wrote."""

    time: float
    node: str
    actor: str
    replica: int
    pid: int
    line: str


_decode = msgspec.json.Decoder(LogLine).decode


def _subject(node: str, replica: int | str, actor: str) -> str:
    return f"{_PREFIX}.{node}.{replica}.{actor}"


async def ensure_logs(nc: NATS, settings: Settings) -> None:
    """Create the logs stream if it is missing."""
    await ensure_stream(
        nc,
        LOG_STREAM,
        [f"{_PREFIX}.>"],
        max_age=settings.logs_max_age,
        max_bytes=settings.logs_max_bytes,
        max_msg_size=16 * 1024,
        replicas=settings.js_replicas,
    )


class LogShipper:
    """Publishes the lines of this node's replicas; :meth:`run` is its task."""

    def __init__(self, nc: NATS, node: str, *, max_rate: int = 1000) -> None:
        self._nc = nc
        self.node = node
        self.max_rate = max_rate
        self._send, self._receive = anyio.create_memory_object_stream[LogLine](_QUEUE)
        # per (actor, replica): [second, lines this second, lines held back]
        self._rates: dict[tuple[str, int], list[int]] = {}
        self._throttle = LogThrottle(log)

    def ship(self, actor: str, replica: int, pid: int, line: str) -> None:
        """Queue one line (never blocks); over the rate or the queue, it is counted."""
        now = time.time()
        second = int(now)
        rate = self._rates.setdefault((actor, replica), [second, 0, 0])
        if rate[0] != second:
            held = rate[2]
            rate[:] = [second, 0, 0]
            if held:
                self._queue(
                    LogLine(
                        now,
                        self.node,
                        actor,
                        replica,
                        pid,
                        f"[actorbus: {held} lines held back: over {self.max_rate} lines/s]",
                    )
                )
        rate[1] += 1
        if rate[1] > self.max_rate:
            rate[2] += 1
            return
        self._queue(LogLine(now, self.node, actor, replica, pid, line))

    def _queue(self, entry: LogLine) -> None:
        try:
            self._send.send_nowait(entry)
        except anyio.ClosedResourceError:
            pass  # a line written while the node stops: it still shows on the console
        except anyio.WouldBlock:
            self._throttle.log(logging.WARNING, "full", "log queue full: lines dropped")

    def close(self) -> None:
        """No more lines: :meth:`run` returns once it has published what is queued."""
        self._send.close()

    async def run(self) -> None:
        """Publish queued lines until :meth:`close` (or cancelled)."""
        async with self._receive:
            async for entry in self._receive:
                try:
                    await publish(
                        self._nc, _subject(entry.node, entry.replica, entry.actor), _encode(entry)
                    )
                except ActorError as exc:
                    self._throttle.log(logging.WARNING, "publish", "log line lost: %s", exc)


async def read_logs(
    nc: NATS,
    actor: str,
    *,
    node: str | None = None,
    replica: int | None = None,
    since: float | None = None,
    follow: bool = False,
) -> AsyncIterator[LogLine | None]:
    """The stored lines of ``actor`` (on ``node``, of ``replica``), oldest first, from the
    Unix time ``since``; with ``follow``, then ``None`` once caught up (at the first line
    if none was stored), then each new line until cancelled."""
    subject = _subject(node or "*", "*" if replica is None else replica, check_name(actor))
    start = dt.datetime.fromtimestamp(since, dt.UTC) if since is not None else None
    caught_up = False
    async for msg in stream_messages(nc, LOG_STREAM, subject, since=start, follow=follow):
        try:
            line = _decode(msg.data)
        except msgspec.DecodeError:
            line = None  # not ours
        if line is not None:
            yield line
        if follow and not caught_up and msg.metadata.num_pending == 0:
            caught_up = True
            yield None
