"""Shipping replica logs to JetStream: every line a node's replicas write.

The supervisor reads each replica's output (its log records, and whatever the actor's
code prints) and publishes each line on its subject (:func:`actorbus.client.logs.
log_subject`); the ``ACTOR_LOGS`` stream keeps them, bounded by bytes and age, the oldest
dropped first. Shipping never waits: lines go out as core publishes from a bounded queue,
and a replica that writes more than ``max_rate`` lines a second has the excess counted
and reported in one line. Each line is a record (:mod:`actorbus.bus.records`) signed by
the node's control actor's key, the key the policy binds to ``node.<node>``.
"""

from __future__ import annotations

import logging
import time

import anyio
import anyio.abc
import msgspec

from ..bus import NATS, ActorError, Keypair, LogThrottle, publish
from ..bus.jetstream import ensure_stream
from ..bus.records import sign_record
from ..bus.settings import Settings
from ..bus.subjects import LOG_PREFIX, LOG_STREAM
from ..client.logs import LogLine, log_subject

__all__ = ["LogShipper", "ensure_logs"]

log = logging.getLogger("actorbus.logs")

_QUEUE = 10_000
_encode = msgspec.json.Encoder().encode


async def ensure_logs(nc: NATS, settings: Settings) -> None:
    """Create the logs stream if it is missing."""
    await ensure_stream(
        nc,
        LOG_STREAM,
        [f"{LOG_PREFIX}.>"],
        max_age=settings.logs_max_age,
        max_bytes=settings.logs_max_bytes,
        max_msg_size=16 * 1024,
        replicas=settings.js_replicas,
    )


class LogShipper:
    """Publishes the lines of this node's replicas; :meth:`run` is its task."""

    def __init__(self, nc: NATS, node: str, key: Keypair, *, max_rate: int = 1000) -> None:
        self._nc = nc
        self.node = node
        self._key = key
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
                subject = log_subject(entry.node, entry.replica, entry.actor)
                try:
                    await publish(
                        self._nc,
                        subject,
                        sign_record(self._key, LOG_STREAM, subject, _encode(entry)),
                    )
                except ActorError as exc:
                    self._throttle.log(logging.WARNING, "publish", "log line lost: %s", exc)
