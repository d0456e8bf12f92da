"""The jobs actor's bucket and streams, as the policy actor makes them.

A host's ticket grants no stream's creation or change: the config sent with it is the
sender's, and a host that made a stream capturing ``actor.>`` and ``_INBOX.>`` read every
caller's requests and private replies (issue 30). So the policy actor makes a jobs
actor's streams, with these settings, when one of its replicas connects
(:mod:`actorbus.actors.policy.callout`); the jobs actor binds to them, and makes them
itself only on a NATS without the policy's auth callout (where it may).
"""

from __future__ import annotations

from ...bus import NATS
from ...bus.jetstream import Bucket, ensure_stream
from ...bus.settings import Settings
from ...bus.subjects import JobsNames

__all__ = ["jobs_streams"]

_MAX_QUEUES = 1024
"""Jobs whose queue is open at once, at most (a job's queue is a consumer of the work
stream, with its waiting pulls: the number of them bounds what the server holds)."""
_MAX_READERS = 1024
"""Readers of the results at once, at most (each an ordered consumer of its stream)."""
_DUPLICATE_WINDOW = 600.0
"""Seconds a slice's message id is remembered (a slice queued again within it is not
stored twice)."""


async def jobs_streams(nc: NATS, name: str, settings: Settings, *, adjust: bool) -> Bucket:
    """Make (or bind to) the job records' bucket and the work and record streams of the
    jobs actor ``name``; returns the bucket. With ``adjust`` (their maker's), streams made
    before take these settings' limits; without, they are kept as they are."""
    names = JobsNames(name)
    retention = settings.jobs_retention
    records = await Bucket.open(nc, names.bucket, ttl=retention, replicas=settings.js_replicas)
    await ensure_stream(
        nc,
        names.work_stream,
        [names.work("*")],
        max_age=retention,
        replicas=settings.js_replicas,
        work_queue=True,
        duplicate_window=_DUPLICATE_WINDOW,
        max_consumers=_MAX_QUEUES,
        adjust=adjust,
    )
    await ensure_stream(
        nc,
        names.record_stream,
        [names.result("*", "*"), names.batch("*")],
        max_age=retention,
        max_bytes=settings.jobs_max_bytes,
        replicas=settings.js_replicas,
        max_consumers=_MAX_READERS,
        adjust=adjust,
    )
    return records
