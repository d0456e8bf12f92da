"""Reading the audit trail: who changed what, when, for every admin action on a NATS.

The policy actor records each policy change and each node supervisor each control action
(:mod:`actorbus.node.audit`) in one JetStream stream, ``ACTOR_POLICY_AUDIT``, under
``actorbus.audit.<source>`` (the recording actor's name), kept a year.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import msgspec

from ..bus import NATS, ActorError, printable
from ..bus.jetstream import stream_messages
from ..bus.records import open_record
from ..bus.subjects import AUDIT_PREFIX, AUDIT_STREAM
from ..bus.wire import UNDECODABLE

__all__ = ["AuditRecord", "read_audit"]

_decode = msgspec.json.Decoder(dict[str, Any]).decode


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
) -> list[dict[str, Any]]:
    """The last ``limit`` records of the sources ``sources`` accepts, oldest first, each
    with ``by``, the key that signed it. A record that is not signed by one of its
    source's ``writers`` (the keys that may serve that actor) is marked: it holds only
    its time, its source and why it is ``forged``."""
    if limit <= 0:
        return []
    records: list[dict[str, Any]] = []
    async for msg in stream_messages(nc, AUDIT_STREAM, f"{AUDIT_PREFIX}.>"):
        source = msg.subject[len(AUDIT_PREFIX) + 1 :]
        if not sources(source):
            continue
        try:
            record = open_record(AUDIT_STREAM, msg.subject, msg.data)
            entry = _decode(record.value or b"null")
            if record.by not in writers(source):
                raise ValueError(f"signed by {record.by}, not a key of {source}")
        except (ActorError, *UNDECODABLE, ValueError, TypeError) as exc:
            why = exc.message if isinstance(exc, ActorError) else str(exc)
            entry = {"time": msg.metadata.timestamp.timestamp(), "forged": printable(why, 200)}
        else:
            entry["by"] = record.by
        entry["source"] = source
        records.append(entry)
        del records[:-limit]
    return records
