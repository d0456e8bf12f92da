"""Reading the audit trail: who changed what, when, for every admin action on a NATS.

The policy actor records each policy change and each node supervisor each control action
(:mod:`actorbus.node.audit`) in one JetStream stream, ``ACTOR_POLICY_AUDIT``, under
``actorbus.audit.<source>`` (the recording actor's name), kept a year.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ..bus import NATS
from ..bus.jetstream import stream_messages
from ..bus.subjects import AUDIT_PREFIX, AUDIT_STREAM

__all__ = ["AuditRecord", "read_audit"]

_decode = msgspec.json.Decoder(dict[str, Any]).decode


class AuditRecord(msgspec.Struct, frozen=True):
    """One admin action: who (an address) did what, with which arguments, when, where."""

    time: float
    who: str
    what: str
    args: dict[str, Any]
    source: str = ""


async def read_audit(nc: NATS, limit: int, sources: Callable[[str], bool]) -> list[dict[str, Any]]:
    """The last ``limit`` records of the sources ``sources`` accepts, oldest first."""
    if limit <= 0:
        return []
    records: list[dict[str, Any]] = []
    async for msg in stream_messages(nc, AUDIT_STREAM, f"{AUDIT_PREFIX}.>"):
        source = msg.subject[len(AUDIT_PREFIX) + 1 :]
        if not sources(source):
            continue
        entry = _decode(msg.data)
        entry.setdefault("source", source)
        records.append(entry)
        del records[:-limit]
    return records
