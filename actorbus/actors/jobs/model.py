"""What the jobs actor stores and answers: job records, options, results, status, ranges."""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

import msgspec

from ...bus import BadRequest
from ...bus.delegation import Delegation

__all__ = [
    "ACTIVE",
    "PAGE_SIZE",
    "Batch",
    "JobOptions",
    "JobRecord",
    "JobStatus",
    "SliceResult",
    "page_of",
    "parse_ranges",
]

State = Literal["open", "closed", "finished", "cancelled"]
ACTIVE: Final = frozenset({"open", "closed"})
"""States in which a job's slices run."""
PAGE_SIZE: Final = 1000
"""Slice indices per page of :func:`page_of` (and of ``results``)."""
_MAX_RANGES = 100
_RANGE = re.compile(r"\s*([0-9]{1,12})\s*(?:-\s*([0-9]{1,12})\s*)?")


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


class SliceResult(msgspec.Struct, omit_defaults=True):
    """The outcome of one slice: its value (status 2xx) or its error."""

    index: int
    status: int
    value: Any = None
    error: str = ""
    id: str = ""
    """The error id of the target's log line, if it gave one."""
    attempts: int = 1


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


def parse_ranges(text: str, total: int) -> list[tuple[int, int]]:
    """``"1-10,33-35"`` -> ``[(1, 10), (33, 35)]``, merged, sorted and cut to ``1..total``;
    empty means every index. Raises :class:`BadRequest` for anything else."""
    if not text.strip():
        return [(1, total)] if total else []
    parts = text.split(",")
    if len(parts) > _MAX_RANGES:
        raise BadRequest(f"at most {_MAX_RANGES} ranges")
    spans = []
    for part in parts:
        match = _RANGE.fullmatch(part)
        if match is None:
            raise BadRequest("ranges are N or N-M, comma-separated, e.g. 1-10,33-35")
        first = int(match[1])
        last = int(match[2]) if match[2] else first
        if not 1 <= first <= last:
            raise BadRequest(f"range {first}-{last}: indices start at 1, N <= M")
        if first <= total:
            spans.append((first, min(last, total)))
    merged: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def page_of(spans: list[tuple[int, int]], page: int) -> list[int]:
    """The indices of page ``page`` (from 0, :data:`PAGE_SIZE` each) of ``spans``."""
    skip = page * PAGE_SIZE
    indices: list[int] = []
    for first, last in spans:
        length = last - first + 1
        if skip >= length:
            skip -= length
            continue
        start = first + skip
        skip = 0
        indices.extend(range(start, min(last, start + PAGE_SIZE - len(indices) - 1) + 1))
        if len(indices) >= PAGE_SIZE:
            break
    return indices
