"""Slice index ranges as jobs take them: ``"1-10,33-35"``, and pages: of their indices, and
of every list an actor answers (at most :data:`PAGE_SIZE` items, :mod:`actorbus.host.pages`)."""

from __future__ import annotations

import re
from typing import Final

from .errors import BadRequest

__all__ = ["PAGE_SIZE", "check_limit", "page_of", "parse_ranges"]

PAGE_SIZE: Final = 1000
"""Items per page at most: slice indices of :func:`page_of` (and of a job's ``results``),
and the items of any list an actor answers (a page of users, of jobs...)."""
_MAX_RANGES = 100
_RANGE = re.compile(r"\s*([0-9]{1,12})\s*(?:-\s*([0-9]{1,12})\s*)?")


def check_limit(limit: int) -> int:
    """``limit`` if it is a page's size (1 to :data:`PAGE_SIZE`); raises
    :class:`BadRequest` otherwise."""
    if not isinstance(limit, int) or not 1 <= limit <= PAGE_SIZE:
        raise BadRequest(f"limit must be 1 to {PAGE_SIZE}")
    return limit


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
