"""Writing the audit trail (:mod:`actorbus.client.audit` reads it). Records are written
acknowledged: an action whose record cannot be stored says so."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from ..bus import NATS
from ..bus.jetstream import ensure_stream, publish_acked
from ..bus.subjects import AUDIT_PREFIX, AUDIT_STREAM
from ..client.audit import AuditRecord

__all__ = ["ensure_audit", "record"]

_MAX_AGE = 365 * 24 * 3600.0
_encode = msgspec.json.Encoder().encode


async def ensure_audit(nc: NATS, *, replicas: int = 1) -> None:
    """Create the audit stream if it is missing."""
    await ensure_stream(
        nc, AUDIT_STREAM, [f"{AUDIT_PREFIX}.>"], max_age=_MAX_AGE, replicas=replicas
    )


async def record(nc: NATS, source: str, who: str, what: str, args: dict[str, Any]) -> None:
    """Store one record for ``source``; raises :class:`Unavailable` if it cannot be stored."""
    entry = AuditRecord(time=time.time(), who=who, what=what, args=args, source=source)
    await publish_acked(nc, f"{AUDIT_PREFIX}.{source}", _encode(entry))
