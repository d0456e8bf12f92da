"""Reading replica logs from JetStream: ``actor logs``, from any machine.

Node supervisors ship every line their replicas write (:mod:`actorbus.node.logs`) on
``actorbus.logs.<node>.<replica>.<actor>``: node and replica index are one token each and
the actor name (which may hold dots) comes last, so a filter can never mistake one for
another. The ``ACTOR_LOGS`` stream keeps them, bounded by bytes and age.

Each line is signed by its node's control actor (``node.<node>``); a reader checks the
signature and, when it can ask the policy which keys it binds to each node
(:class:`NodeKeys`), the signer. A line that fails is shown marked, never as the node's.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import AsyncIterator

import msgspec

from ..bus import NATS, ActorError, printable
from ..bus.jetstream import stream_messages
from ..bus.records import open_record
from ..bus.subjects import LOG_PREFIX, LOG_STREAM, NODE_PREFIX, check_name
from ..bus.wire import UNDECODABLE
from .client import Client

__all__ = ["LogLine", "NodeKeys", "log_subject", "read_logs"]

log = logging.getLogger("actorbus.logs")

_REFRESH = 10.0
"""Seconds before a line from a node not yet known asks the policy again."""


class LogLine(msgspec.Struct, frozen=True, omit_defaults=True):
    """One line a replica wrote."""

    time: float
    node: str
    actor: str
    replica: int
    pid: int
    line: str
    forged: str = ""
    """Set by a reader: why this line does not count as its node's (never sent)."""


class NodeKeys:
    """The keys the policy binds to each node's control actor, asked of the policy actor
    (its ``names``, an admin's call) when a node is first seen, at most every 10 s. If the
    policy cannot say (not an admin, no policy), signers are not checked, and the reader
    is told once."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._keys: dict[str, list[str]] | None = None
        self._asked = -_REFRESH

    async def of(self, node: str) -> list[str] | None:
        """The keys that may sign ``node``'s lines; ``None``: unknown (not checked)."""
        if (
            self._keys is None or node not in self._keys
        ) and time.monotonic() > self._asked + _REFRESH:
            self._asked = time.monotonic()
            settings = self._client.settings
            try:
                names = await self._client.call(settings.policy, "names")
            except ActorError as exc:
                if self._keys is None:
                    log.warning(
                        "the policy cannot say which keys serve each node (%s): log lines' "
                        "signatures are checked, their signers are not",
                        exc.message,
                    )
                    self._keys = {}
            else:
                self._keys = {
                    name.removeprefix(NODE_PREFIX): keys
                    for name, keys in msgspec.convert(names, dict[str, list[str]]).items()
                    if name.startswith(NODE_PREFIX)
                }
        return self._keys.get(node) if self._keys else None


_decode = msgspec.json.Decoder(LogLine).decode


def log_subject(node: str, replica: int | str, actor: str) -> str:
    """The subject of ``actor``'s lines from ``replica`` on ``node`` (``*`` wildcards)."""
    return f"{LOG_PREFIX}.{node}.{replica}.{actor}"


async def read_logs(
    nc: NATS,
    actor: str,
    keys: NodeKeys,
    *,
    node: str | None = None,
    replica: int | None = None,
    since: float | None = None,
    follow: bool = False,
) -> AsyncIterator[LogLine | None]:
    """The stored lines of ``actor`` (on ``node``, of ``replica``), oldest first, from the
    Unix time ``since``; with ``follow``, then ``None`` once caught up (at the first line
    if none was stored), then each new line until cancelled. A line that is not signed by
    a key of its node (``keys``) comes marked ``forged``."""
    subject = log_subject(node or "*", "*" if replica is None else replica, check_name(actor))
    start = dt.datetime.fromtimestamp(since, dt.UTC) if since is not None else None
    caught_up = False
    async for msg in stream_messages(nc, LOG_STREAM, subject, since=start, follow=follow):
        yield await _verified(msg.subject, msg.data, msg.metadata.timestamp.timestamp(), keys)
        if follow and not caught_up and msg.metadata.num_pending == 0:
            caught_up = True
            yield None


async def _verified(subject: str, data: bytes, stored: float, keys: NodeKeys) -> LogLine:
    """The line stored at ``subject``; if it does not count as its node's, marked with why
    (what it says, or an excerpt of what was stored if it says nothing readable)."""
    _, _, node, replica, actor = subject.split(".", 4)
    index = int(replica) if replica.isdigit() else -1
    try:
        record = open_record(LOG_STREAM, subject, data)
        line = _decode(record.value or b"null")
    except (ActorError, *UNDECODABLE) as exc:
        why = exc.message if isinstance(exc, ActorError) else "not a log line"
        text = printable(data.decode(errors="replace"), 200)
        return LogLine(stored, node, actor, index, 0, text, why)
    signers = await keys.of(node)
    if line.node != node or line.actor != actor or str(line.replica) != replica:
        why = "signed for another node, replica or actor"
    elif signers is not None and record.by not in signers:
        why = f"signed by {record.by}, not a key of {NODE_PREFIX}{node}"
    else:
        return line
    return LogLine(stored, node, actor, index, line.pid, printable(line.line, 200), why)
