"""Per-worker LRU of loaded models, bounded by bytes and by count, checked against a cheap
stamp of the stored files.

Another process (a REST worker, the ``bdi train`` command) may store a new version at any
time; each lookup compares the stamp taken at load time (``stat`` of the version pointer:
inode, size, mtime_ns) with the current one and reloads on any difference.

The bound is the loaded models' resident size (``size(value)``: for a model its arrays and
its faiss index, :func:`engine.footprint.resident_bytes`) against ``max_bytes``
(``BDI_CACHE_MAX_MB``; by default :data:`DEFAULT_SHARE` of the memory this machine or its
cgroup has available), the least recently used evicted first; ``max_entries``
(``BDI_CACHE_MAX_ENTRIES``) caps the count as well. A stream whose models do not fit
reloads evicted ones from disk again and again: each such reload is counted, and a
WARNING with the numbers is logged at most once per :data:`WARN_EVERY_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

MB = 1024 * 1024
MAX_ENTRIES = 1024  # BDI_CACHE_MAX_ENTRIES's default: a cap; the bytes bound first
DEFAULT_SHARE = 0.25  # of the available memory, per worker, when BDI_CACHE_MAX_MB is 0
FALLBACK_MB = 2048.0  # where the available memory cannot be read
WINDOW_S = 60.0  # working set and reloads are counted over this window
WARN_EVERY_S = 60.0


def available_memory_bytes() -> int | None:
    """Memory this process may still use: ``MemAvailable`` of ``/proc/meminfo``, or less
    when a cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) sets a lower limit
    (less what the cgroup already uses). None where neither can be read."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroup = Path("/sys/fs/cgroup")
    for limit, usage in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            text = (cgroup / limit).read_text().strip()
            if text != "max" and int(text) < 1 << 60:  # v1 says "no limit" with a huge one
                found.append(max(0, int(text) - int((cgroup / usage).read_text())))
            break
        except (OSError, ValueError):
            continue
    return min(found) if found else None


def default_budget_mb() -> float:
    """``BDI_CACHE_MAX_MB`` when set to 0: :data:`DEFAULT_SHARE` of the available memory."""
    available = available_memory_bytes()
    return FALLBACK_MB if available is None else DEFAULT_SHARE * available / MB


@dataclass
class _Item(Generic[T]):
    stamp: Hashable
    value: T
    nbytes: int


class ModelCache(Generic[T]):
    """At most ``max_entries`` values and ``max_bytes`` of them as ``size`` measures each
    (None: no byte bound); one loader at a time per key. The most recent value is kept
    even when it alone exceeds ``max_bytes``. Thread-safe."""

    def __init__(
        self,
        max_entries: int,
        max_bytes: int | None = None,
        size: Callable[[T], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        label: Callable[[Hashable], str] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = size
        self.clock = clock
        self.label = label or _name  # a key as reports name it
        self._items: OrderedDict[Hashable, _Item[T]] = OrderedDict()
        self._bytes = 0
        self._guard = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}
        self._evicted: set[Hashable] = set()  # evicted for room: loading one is a reload
        self._used: dict[Hashable, tuple[float, int]] = {}  # key -> (last use, its bytes)
        self._reload_times: deque[float] = deque()
        self._warned_at: float | None = None
        self.hits = 0
        self.loads = 0
        self.reloads = 0
        self.evictions = 0

    def __len__(self) -> int:
        with self._guard:
            return len(self._items)

    @property
    def resident_bytes(self) -> int:
        """What the cached values hold, as ``size`` measured them."""
        return self._bytes

    def holds(self, key: Hashable, value: T) -> bool:
        """Whether ``value`` itself is still cached under ``key`` (not evicted, not replaced)."""
        with self._guard:
            item = self._items.get(key)
            return item is not None and item.value is value

    def nbytes(self, key: Hashable) -> int | None:
        """The measured size of the value cached under ``key`` (None: none cached)."""
        with self._guard:
            item = self._items.get(key)
            return None if item is None else item.nbytes

    def peek(self, key: Hashable, stamp: Hashable) -> T | None:
        with self._guard:
            item = self._items.get(key)
            if item is None or item.stamp != stamp:
                return None
            self._items.move_to_end(key)
            self._used[key] = (self.clock(), item.nbytes)
            self.hits += 1
            return item.value

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
        nbytes = self.size(value) if self.size is not None else 0
        with self._guard:
            now = self.clock()
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = _Item(stamp, value, nbytes)
            self._bytes += nbytes
            self._used[key] = (now, nbytes)
            self.loads += 1
            if key in self._evicted:
                self._evicted.discard(key)
                self.reloads += 1
                self._reload_times.append(now)
            while len(self._items) > 1 and (
                len(self._items) > self.max_entries
                or (self.max_bytes is not None and self._bytes > self.max_bytes)
            ):
                gone, item = self._items.popitem(last=False)
                self._bytes -= item.nbytes
                self._evicted.add(gone)
                self.evictions += 1
            warning = self._thrashing(now)
        if warning is not None:
            log.warning(
                "model working set exceeds the cache: models are reloaded from disk; raise "
                "BDI_CACHE_MAX_MB / BDI_CACHE_MAX_ENTRIES or spread the ROIs over consumers",
                extra=warning,
            )

    def _thrashing(self, now: float) -> dict[str, Any] | None:
        """The numbers of a WARNING when evicted models came back within the window and
        none was logged for :data:`WARN_EVERY_S` (under the guard)."""
        while self._reload_times and self._reload_times[0] < now - WINDOW_S:
            self._reload_times.popleft()
        self._used = {k: v for k, v in self._used.items() if v[0] >= now - WINDOW_S}
        if not self._reload_times:
            return None
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY_S:
            return None
        self._warned_at = now
        return {
            "working_set_mb": round(sum(n for _, n in self._used.values()) / MB, 1),
            "budget_mb": None if self.max_bytes is None else round(self.max_bytes / MB, 1),
            "models": len(self._used),
            "max_entries": self.max_entries,
            "reloads_per_min": round(len(self._reload_times) * 60.0 / WINDOW_S, 1),
        }

    def report(self) -> dict[str, Any]:
        """The cache against its bounds, and each cached value's size (MB) under its
        ``label`` (health reports)."""
        with self._guard:
            sizes = {self.label(k): round(item.nbytes / MB, 3) for k, item in self._items.items()}
            return {
                "budget_mb": None if self.max_bytes is None else round(self.max_bytes / MB, 1),
                "resident_mb": round(self._bytes / MB, 3),
                "entries": len(self._items),
                "max_entries": self.max_entries,
                "hits": self.hits,
                "loads": self.loads,
                "reloads": self.reloads,
                "evictions": self.evictions,
                "models_mb": sizes,
            }

    def invalidate(self, key: Hashable | None = None) -> None:
        with self._guard:
            if key is None:
                self._items.clear()
                self._bytes = 0
            else:
                item = self._items.pop(key, None)
                if item is not None:
                    self._bytes -= item.nbytes


def _name(key: Hashable) -> str:
    return "/".join(map(str, key)) if isinstance(key, tuple) else str(key)
