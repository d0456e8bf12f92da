"""What the jobs actor stores and answers: job records, options, results, status."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from ...bus.delegation import Delegation

__all__ = [
    "ACTIVE",
    "Batch",
    "JobOptions",
    "JobRecord",
    "JobStatus",
    "SliceResult",
]

State = Literal["open", "closed", "finished", "cancelled"]
ACTIVE: Final = frozenset({"open", "closed"})
"""States in which a job's slices run."""


class JobOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a job's slices run."""

    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    """Further attempts of a slice whose call fails with 408 or 5xx (never for 4xx)."""
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    """Slices of this job one jobs replica runs at once."""
    timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    """Seconds per slice call."""


class Batch(msgspec.Struct, frozen=True):
    """Slices given indices ``start..start+count-1`` and stored (record ``seq``) but maybe
    not all queued yet: whoever finds it pending later queues them again."""

    start: int
    count: int
    seq: int
    at: float


class JobRecord(msgspec.Struct, kw_only=True):
    """A job as the jobs actor keeps it (KV ``<bucket>/<id>``)."""

    id: str
    owner: str
    work: str
    delegation: Delegation
    options: JobOptions
    created: float
    state: State = "open"
    total: int = 0
    closed: float | None = None
    finished: float | None = None
    pending: list[Batch] = msgspec.field(default_factory=list)
    trace: dict[str, str] = msgspec.field(default_factory=dict)
    """The trace headers of its submit: its slices are called in that trace."""


class SliceResult(msgspec.Struct, omit_defaults=True):
    """The outcome of one slice: its value (status 2xx) or its error."""

    index: int
    status: int
    attempts: int
    """Calls made (1 unless it was retried after a 408 or 5xx)."""
    value: Any = None
    error: str = ""
    id: str = ""
    """The error id of the target's log line, if it gave one."""


class JobStatus(msgspec.Struct):
    """Where a job stands."""

    id: str
    work: str
    owner: str
    state: State
    total: int
    done: int
    """Slices with a result of status 2xx."""
    failed: int
    """Slices with an error result (after their retries)."""
    in_flight: int
    """Slices taken by a worker and not finished."""
    queued: int
    """Slices waiting for a worker."""
    rate: float
    """Results per second lately."""
    eta: float | None
    """Seconds until the last known slice is done, at ``rate``."""
    created: float
    closed: float | None
    finished: float | None
    cursor: str = ""
    """Where this job is in its owner's jobs, oldest first: what ``jobs(after=...)`` takes
    to go on after it."""


def job_cursor(created: float, job: str) -> str:
    """The place of a job made at ``created`` among its owner's, as text that sorts so."""
    return f"{created:017.6f}/{job}"
