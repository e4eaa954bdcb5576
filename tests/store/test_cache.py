"""The per-worker model cache: LRU bound, stamp checks, one load per key at a time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

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


# --- the byte budget (BDI_CACHE_MAX_MB) ---------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sized(max_entries: int = 100, max_bytes: int | None = 100) -> tuple[ModelCache[bytes], Clock]:
    """A cache of ``bytes`` values measured by their length."""
    clock = Clock()
    return ModelCache(max_entries, max_bytes, size=len, clock=clock), clock


def test_the_least_recently_used_are_evicted_by_bytes() -> None:
    cache, _ = sized(max_bytes=100)
    cache.put("a", 1, b"a" * 40)
    cache.put("b", 1, b"b" * 40)
    assert cache.peek("a", 1) is not None  # "b" is now the least recently used
    cache.put("c", 1, b"c" * 30)  # 110 bytes: one must go, and only one
    assert cache.peek("b", 1) is None and cache.peek("a", 1) and cache.peek("c", 1)
    assert cache.resident_bytes == 70 and cache.evictions == 1 and len(cache) == 2


def test_many_small_models_fit_where_the_count_would_not_matter() -> None:
    cache, _ = sized(max_bytes=100)
    for i in range(10):
        cache.put(i, 1, b"x" * 10)
    assert len(cache) == 10 and cache.evictions == 0
    cache.put("big", 1, b"y" * 55)  # room for it: the six oldest go
    assert len(cache) == 5 and cache.resident_bytes == 95
    assert [k for k in range(10) if cache.peek(k, 1) is not None] == [6, 7, 8, 9]


def test_the_count_stays_a_cap() -> None:
    cache, _ = sized(max_entries=2, max_bytes=10_000)
    for key in "abc":
        cache.put(key, 1, b"x")
    assert len(cache) == 2 and cache.peek("a", 1) is None


def test_a_model_larger_than_the_budget_is_kept_alone() -> None:
    cache, _ = sized(max_bytes=100)
    cache.put("a", 1, b"a" * 10)
    cache.put("huge", 1, b"h" * 500)
    assert len(cache) == 1 and cache.peek("huge", 1) is not None
    assert cache.resident_bytes == 500


def test_replacing_and_invalidating_keep_the_byte_count() -> None:
    cache, _ = sized(max_bytes=100)
    cache.put("a", 1, b"a" * 40)
    cache.put("a", 2, b"a" * 30)  # a new version replaces the old one
    assert cache.resident_bytes == 30
    cache.put("b", 1, b"b" * 20)
    cache.invalidate("a")
    assert cache.resident_bytes == 20
    cache.invalidate()
    assert cache.resident_bytes == 0 and len(cache) == 0


def test_the_report_names_each_model_with_its_size() -> None:
    mb = 1024 * 1024
    clock = Clock()
    cache: ModelCache[bytes] = ModelCache(
        4, 3 * mb, size=len, clock=clock, label=lambda k: f"model-{k}"
    )
    cache.put("a", 1, b"a" * mb)
    cache.put("b", 1, b"b" * (mb // 2))
    report = cache.report()
    assert report["models_mb"] == {"model-a": 1.0, "model-b": 0.5}
    assert report["resident_mb"] == 1.5 and report["budget_mb"] == 3.0
    assert (report["entries"], report["max_entries"], report["loads"]) == (2, 4, 2)
    assert cache.holds("a", cache.peek("a", 1)) and not cache.holds("a", b"other")
    assert cache.nbytes("b") == mb // 2 and cache.nbytes("zz") is None


MB = 1024 * 1024


def _cycle(cache: ModelCache[bytes], keys: str, size: int = 40) -> None:
    """Frames naming ``keys`` in turn: each a lookup, loaded when missing."""
    for key in keys:
        cache.get(key, lambda: 1, lambda k=key: (1, k.encode() * size))


def test_a_working_set_over_the_budget_warns_with_the_numbers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()  # values of N bytes stand for models of N MB
    cache: ModelCache[bytes] = ModelCache(100, 100 * MB, size=lambda v: len(v) * MB, clock=clock)
    # two models of 40 MB fit in 100 MB, three do not
    with caplog.at_level("WARNING", logger="store.cache"):
        _cycle(cache, "ab" * 5)
        assert cache.reloads == 0 and not caplog.records, "a working set that fits: silent"
        _cycle(cache, "abc" * 4)  # round-robin over three: every lookup a reload
    assert cache.reloads == 9
    (record,) = caplog.records  # rate-limited: one per minute
    assert record.levelname == "WARNING" and "BDI_CACHE_MAX_MB" in record.getMessage()
    assert record.working_set_mb == 120.0  # type: ignore[attr-defined]
    assert record.budget_mb == 100.0  # type: ignore[attr-defined]
    assert record.models == 3  # type: ignore[attr-defined]
    assert record.reloads_per_min == 1.0  # type: ignore[attr-defined]
    with caplog.at_level("WARNING", logger="store.cache"):
        for _ in range(35):  # the stream goes on: three frames every 2 s for 70 s
            clock.now += 2.0
            _cycle(cache, "abc")
    assert len(caplog.records) == 2  # the next one a minute after the first
    later = caplog.records[1]
    assert later.models == 3 and later.reloads_per_min >= 90.0  # type: ignore[attr-defined]


def test_a_new_version_or_a_first_load_is_no_reload() -> None:
    cache, _ = sized(max_bytes=100)
    stamp = [1]
    for _ in range(3):
        cache.get("a", lambda: stamp[0], lambda: (stamp[0], b"a" * 40))
        stamp[0] += 1  # saved again meanwhile
    assert cache.loads == 3 and cache.reloads == 0


def test_the_default_budget_is_a_share_of_the_available_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from store import cache as cache_module

    available = cache_module.available_memory_bytes()
    assert available is not None and available > 0  # Linux: /proc/meminfo
    monkeypatch.setattr(cache_module, "available_memory_bytes", lambda: 8 * 1024**3)
    assert cache_module.default_budget_mb() == 2048.0
    monkeypatch.setattr(cache_module, "available_memory_bytes", lambda: None)
    assert cache_module.default_budget_mb() == cache_module.FALLBACK_MB


def test_the_store_sizes_its_cache_from_the_settings(tmp_path: Path) -> None:
    from store import ModelStore
    from tests.helpers.store import tiny_settings

    store = ModelStore(tiny_settings(tmp_path, cache_max_mb=64.0))
    assert store.cache.max_bytes == 64 * 1024 * 1024
    assert ModelStore(root=tmp_path).cache.max_bytes is not None  # from the machine's memory
