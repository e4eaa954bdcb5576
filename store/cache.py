"""Per-worker LRU of loaded models, checked against a cheap stamp of the stored files.

Another process (a REST worker, the ``bdi train`` command) may store a new version at any
time; each lookup compares the stamp taken at load time (``stat`` of the version pointer:
inode, size, mtime_ns) with the current one and reloads on any difference.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class ModelCache(Generic[T]):
    """At most ``max_entries`` values; one loader at a time per key. Thread-safe."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, tuple[Hashable, T]] = OrderedDict()
        self._guard = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}
        self.hits = 0
        self.loads = 0

    def __len__(self) -> int:
        with self._guard:
            return len(self._items)

    def peek(self, key: Hashable, stamp: Hashable) -> T | None:
        with self._guard:
            item = self._items.get(key)
            if item is None or item[0] != stamp:
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[1]

    def get(
        self, key: Hashable, stamp: Callable[[], Hashable], load: Callable[[], tuple[Hashable, T]]
    ) -> T:
        """The cached value if ``stamp()`` still matches, else ``load() -> (stamp, value)``."""
        value = self.peek(key, stamp())
        if value is not None:
            return value
        with self._guard:
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            value = self.peek(key, stamp())  # another thread may have loaded it meanwhile
            if value is not None:
                return value
            new_stamp, value = load()
            self.put(key, new_stamp, value)
            return value

    def put(self, key: Hashable, stamp: Hashable, value: T) -> None:
        with self._guard:
            self._items[key] = (stamp, value)
            self._items.move_to_end(key)
            self.loads += 1
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def invalidate(self, key: Hashable | None = None) -> None:
        with self._guard:
            if key is None:
                self._items.clear()
            else:
                self._items.pop(key, None)
