"""A mapping that keeps at most ``limit`` entries, dropping the least recently used: every
cache keyed by something a caller chooses (an actor name, a token) is one, so asking for
80,000 names that do not exist costs nothing that stays."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["LRU"]

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``limit`` entries; reading one makes it the most recent, and storing past
    the limit drops the least recent."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __getitem__(self, key: K) -> V:
        value = self._entries[key]
        self._entries.move_to_end(key)
        return value

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def setdefault(self, key: K, default: V) -> V:
        value = self.get(key)
        if value is None:
            self[key] = value = default
        return value

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)
