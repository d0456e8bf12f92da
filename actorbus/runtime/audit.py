"""The audit trail: who changed what, when, for every admin action on a NATS.

The policy actor records each policy change and each node supervisor each control action
(start, kill, restart, scale, down) in one JetStream stream, ``ACTOR_POLICY_AUDIT``, under
``actorbus.audit.<source>`` (the recording actor's name), kept a year. Records are
written acknowledged: an action whose record cannot be stored says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from ..bus import NATS
from ..bus.jetstream import ensure_stream, publish_acked, stream_messages

__all__ = ["AUDIT_STREAM", "AuditRecord", "ensure_audit", "read_audit", "record"]

AUDIT_STREAM = "ACTOR_POLICY_AUDIT"
_PREFIX = "actorbus.audit"
_MAX_AGE = 365 * 24 * 3600.0
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class AuditRecord(msgspec.Struct, frozen=True):
    """One admin action: who (an address) did what, with which arguments, when, where."""

    time: float
    who: str
    what: str
    args: dict[str, Any]
    source: str = ""


async def ensure_audit(nc: NATS, *, replicas: int = 1) -> None:
    """Create the audit stream if it is missing."""
    await ensure_stream(nc, AUDIT_STREAM, [f"{_PREFIX}.>"], max_age=_MAX_AGE, replicas=replicas)


async def record(nc: NATS, source: str, who: str, what: str, args: dict[str, Any]) -> None:
    """Store one record for ``source``; raises :class:`Unavailable` if it cannot be stored."""
    entry = AuditRecord(time=time.time(), who=who, what=what, args=args, source=source)
    await publish_acked(nc, f"{_PREFIX}.{source}", _encode(entry))


async def read_audit(nc: NATS, limit: int, sources: Callable[[str], bool]) -> list[dict[str, Any]]:
    """The last ``limit`` records of the sources ``sources`` accepts, oldest first."""
    if limit <= 0:
        return []
    records: list[dict[str, Any]] = []
    async for msg in stream_messages(nc, AUDIT_STREAM, f"{_PREFIX}.>"):
        source = msg.subject[len(_PREFIX) + 1 :]
        if not sources(source):
            continue
        entry = _decode(msg.data)
        entry.setdefault("source", source)
        records.append(entry)
        del records[:-limit]
    return records
