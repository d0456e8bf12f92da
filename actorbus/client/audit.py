"""Reading the audit trail: who changed what, when, for every admin action on a NATS.

The policy actor records each policy change and each node supervisor each control action
(:mod:`actorbus.node.audit`) in one JetStream stream, ``ACTOR_POLICY_AUDIT``, under
``actorbus.audit.<source>`` (the recording actor's name), kept a year.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from typing import Any

import msgspec

from ..bus import NATS, ActorError, printable
from ..bus.jetstream import stream_tail
from ..bus.ranges import check_limit
from ..bus.records import open_record
from ..bus.subjects import AUDIT_PREFIX, AUDIT_STREAM
from ..bus.wire import UNDECODABLE

__all__ = ["AuditRecord", "read_audit"]

_decode = msgspec.json.Decoder(dict[str, Any]).decode
MAX_BYTES = 512 * 1024
"""Bytes of records one page of the audit trail holds at most (a bulk change's record
lists its keys: tens of kilobytes)."""


class AuditRecord(msgspec.Struct, frozen=True):
    """One admin action: who (an address) did what, with which arguments, when, where."""

    time: float
    who: str
    what: str
    args: dict[str, Any]
    source: str = ""


async def read_audit(
    nc: NATS,
    limit: int,
    sources: Callable[[str], bool],
    writers: Callable[[str], Collection[str]],
    *,
    before: int = 0,
) -> list[dict[str, Any]]:
    """The last ``limit`` records (at most 1,000) of the stream, or the last before
    sequence ``before``, oldest first, those of the sources ``sources`` accepts: each with
    ``by``, the key that signed it, and ``seq``, its place (what ``before`` takes to go on
    further back). Read by sequence from the right place (it read the whole stream
    before, through a consumer, for the last hundred). A record not signed
    by one of its source's ``writers`` (the keys that may serve that actor) is marked: it
    holds only its time, its source and why it is ``forged``. The records come within
    :data:`MAX_BYTES` of text: the oldest of a page are left for the next."""
    check_limit(limit)
    records: list[dict[str, Any]] = []
    size = 0
    for stored in reversed(await stream_tail(nc, AUDIT_STREAM, limit, before=before)):
        subject = stored.subject
        source = subject[len(AUDIT_PREFIX) + 1 :]
        if not subject.startswith(AUDIT_PREFIX + ".") or not sources(source):
            continue
        size += len(stored.data)
        if size > MAX_BYTES and records:
            break
        seq = stored.seq
        try:
            record = open_record(AUDIT_STREAM, subject, stored.data)
            entry = _decode(record.value or b"null")
            if record.by not in writers(source):
                raise ValueError(f"signed by {record.by}, not a key of {source}")
        except (ActorError, *UNDECODABLE, ValueError, TypeError) as exc:
            why = exc.message if isinstance(exc, ActorError) else str(exc)
            entry = {"time": _seconds(stored.time), "forged": printable(why, 200)}
        else:
            entry["by"] = record.by
        entry["source"] = source
        entry["seq"] = seq
        records.append(entry)
    return records[::-1]


def _seconds(stamp: str) -> float:
    """A stored message's time (RFC 3339, nanoseconds) in Unix seconds."""
    try:
        return dt.datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0
