"""Writing the audit trail (:mod:`actorbus.client.audit` reads it). Records are written
acknowledged (an action whose record cannot be stored says so) and signed by the key of
the actor that writes them (:mod:`actorbus.bus.records`)."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from ..bus import NATS, Keypair
from ..bus.jetstream import ensure_stream, publish_acked
from ..bus.records import sign_record
from ..bus.subjects import AUDIT_PREFIX, AUDIT_STREAM
from ..client.audit import AuditRecord

__all__ = ["ensure_audit", "record"]

_MAX_AGE = 365 * 24 * 3600.0
_MAX_RECORD = 64 * 1024
"""Bytes of one record at most (a record is a few hundred): JetStream's answers written
onto a record's subject are stored too, and a large one was 900 KB (issue 30)."""
_encode = msgspec.json.Encoder().encode


async def ensure_audit(nc: NATS, *, replicas: int = 1) -> None:
    """Create the audit stream if it is missing: records cannot be deleted from it, nor
    the stream purged (the stream itself can be deleted only by an identity with JetStream
    rights over it: the policy actor's, the operator's)."""
    await ensure_stream(
        nc,
        AUDIT_STREAM,
        [f"{AUDIT_PREFIX}.>"],
        max_age=_MAX_AGE,
        max_msg_size=_MAX_RECORD,
        replicas=replicas,
        append_only=True,
    )


async def record(
    nc: NATS, source: str, key: Keypair, who: str, what: str, args: dict[str, Any]
) -> None:
    """Store one record for ``source`` (an actor's name), signed by ``key`` (that actor's);
    raises :class:`Unavailable` if it cannot be stored."""
    entry = AuditRecord(time=time.time(), who=who, what=what, args=args, source=source)
    subject = f"{AUDIT_PREFIX}.{source}"
    await publish_acked(nc, subject, sign_record(key, AUDIT_STREAM, subject, _encode(entry)))
