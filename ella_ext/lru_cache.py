"""One LRU cache, bounded in entries and in the bytes of the tensors it holds, thread-safe.

It keeps T5 features across jobs (keys carry the encoder's identity, the token ids' inputs: the
cleaned text, length mode and truncation policy) and a job's TSC outputs per (text, t) across its
batch count. A hit costs a dict lookup.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Optional


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    nbytes: int


class LRUCache:
    def __init__(self, max_entries: Optional[int] = 256, max_bytes: int = 512 * 1024 * 1024):
        self.max_entries = max_entries  # None: bounded in bytes only
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._nbytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def configure(self, *, max_entries: Optional[int] = None, max_bytes: Optional[int] = None) -> None:
        with self._lock:
            if max_entries is not None:
                self.max_entries = max_entries
            if max_bytes is not None:
                self.max_bytes = max_bytes
            self._evict()

    @classmethod
    def _size(cls, value) -> int:
        """Bytes held by the tensors in an entry (a tensor, or a tuple/list holding tensors)."""
        if isinstance(value, (tuple, list)):
            return sum(cls._size(v) for v in value)
        return value.numel() * value.element_size() if hasattr(value, "numel") else 0

    def get(self, key: Hashable):
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value) -> None:
        size = self._size(value)
        with self._lock:
            if key in self._items:
                self._nbytes -= self._sizes.pop(key)
                del self._items[key]
            if size > self.max_bytes or self.max_entries == 0:
                return
            self._items[key] = value
            self._sizes[key] = size
            self._nbytes += size
            self._evict()

    def _full(self) -> bool:
        return (self.max_entries is not None and len(self._items) > self.max_entries) or self._nbytes > self.max_bytes

    def _evict(self) -> None:
        while self._items and self._full():
            key, _ = self._items.popitem(last=False)
            self._nbytes -= self._sizes.pop(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._sizes.clear()
            self._nbytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.misses, len(self._items), self._nbytes)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items
