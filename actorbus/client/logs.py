"""Reading replica logs from JetStream: ``actor logs``, from any machine.

Node supervisors ship every line their replicas write (:mod:`actorbus.node.logs`) on
``actorbus.logs.<node>.<replica>.<actor>``: node and replica index are one token each and
the actor name (which may hold dots) comes last, so a filter can never mistake one for
another. The ``ACTOR_LOGS`` stream keeps them, bounded by bytes and age.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import msgspec

from ..bus import NATS
from ..bus.jetstream import stream_messages
from ..bus.subjects import LOG_PREFIX, LOG_STREAM, check_name

__all__ = ["LogLine", "log_subject", "read_logs"]


class LogLine(msgspec.Struct, frozen=True):
    """One line a replica wrote."""

    time: float
    node: str
    actor: str
    replica: int
    pid: int
    line: str


_decode = msgspec.json.Decoder(LogLine).decode


def log_subject(node: str, replica: int | str, actor: str) -> str:
    """The subject of ``actor``'s lines from ``replica`` on ``node`` (``*`` wildcards)."""
    return f"{LOG_PREFIX}.{node}.{replica}.{actor}"


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
    subject = log_subject(node or "*", "*" if replica is None else replica, check_name(actor))
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
