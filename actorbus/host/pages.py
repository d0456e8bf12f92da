"""Pages of lists that grow (issue 29): an actor function that lists answers at most
``limit`` items (1,000 at most), those whose keys sort after ``after``; a page shorter than
asked for is the last, and the caller asks for the next with the last key it got. So no
reply passes the server's max payload however long the list (``user ls`` failed past
17,000 users, a 2 MB reply), and a key added or removed between two pages moves nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Final

from ..bus.ranges import PAGE_SIZE, check_limit

__all__ = ["MAX_PAGE", "SortedKeys", "check_limit"]

MAX_PAGE: Final = PAGE_SIZE
"""Items one page holds at most."""


class SortedKeys:
    """The keys of one collection in order, sorted again only after it changed (a million
    keys sort in about half a second; each page after that is a bisect)."""

    def __init__(self) -> None:
        self._version: object = None
        self._keys: list[str] = []

    def page(self, keys: Iterable[str], version: object, after: str, limit: int) -> list[str]:
        """The first ``limit`` keys after ``after`` of ``keys``, which are those of the
        collection at ``version`` (anything that changes when it changes)."""
        check_limit(limit)
        if version != self._version:
            self._keys = sorted(keys)
            self._version = version
        start = bisect.bisect_right(self._keys, after) if after else 0
        return self._keys[start : start + limit]
