"""The per-worker model cache: LRU bound, stamp checks, one load per key at a time."""

from __future__ import annotations

import threading
import time

import pytest

from store import ModelCache


def test_lru_eviction_and_hits() -> None:
    cache: ModelCache[str] = ModelCache(2)
    cache.put("a", 1, "A")
    cache.put("b", 1, "B")
    assert cache.peek("a", 1) == "A"  # "a" becomes the most recent
    cache.put("c", 1, "C")
    assert cache.peek("b", 1) is None and cache.peek("a", 1) == "A" and len(cache) == 2


def test_a_changed_stamp_reloads() -> None:
    cache: ModelCache[str] = ModelCache(4)
    stamp = [1]
    loads = []

    def load() -> tuple[int, str]:
        loads.append(stamp[0])
        return stamp[0], f"v{stamp[0]}"

    assert cache.get("k", lambda: stamp[0], load) == "v1"
    assert cache.get("k", lambda: stamp[0], load) == "v1"
    stamp[0] = 2
    assert cache.get("k", lambda: stamp[0], load) == "v2"
    assert loads == [1, 2]
    cache.invalidate("k")
    assert cache.get("k", lambda: stamp[0], load) == "v2" and loads == [1, 2, 2]


def test_concurrent_misses_load_once() -> None:
    cache: ModelCache[str] = ModelCache(4)
    calls = []

    def load() -> tuple[int, str]:
        calls.append(1)
        time.sleep(0.05)
        return 1, "value"

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get("k", lambda: 1, load)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["value"] * 8 and len(calls) == 1


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ModelCache(0)
