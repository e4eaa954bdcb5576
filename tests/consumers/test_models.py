"""Model resolution: once per batch, store checks throttled to BDI_MODEL_POLL_S, hot reload
of a newer version, failures mapped to NO_MODEL / ERROR."""

from __future__ import annotations

import pytest

from consumers.models import ModelResolver, preload_keys
from store import ModelCache, ModelStore, PlanRoi
from store.errors import CorruptModelError, InvalidIdError, MissingModelError
from tests.helpers.consumer import train_model
from tests.helpers.fakes import FakeModel, FakeStore
from tests.helpers.kafka import RECIPE, ROI, ROLE

KEY = (RECIPE, ROLE, ROI)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def resolver(current: object, poll_s: float = 2.0) -> tuple[ModelResolver, FakeStore, Clock]:
    store, clock = FakeStore(current), Clock()
    return ModelResolver(store, poll_s, clock), store, clock  # type: ignore[arg-type]


def test_one_lookup_per_key_per_batch():
    r, store, _ = resolver(FakeModel("v1"))
    out = r.resolve([KEY, KEY, KEY, ("other", ROLE, ROI)])
    assert store.calls == 2 and out[KEY].model == FakeModel("v1")


def test_store_is_checked_at_most_once_per_poll_period():
    r, store, clock = resolver(FakeModel("v1"), poll_s=2.0)
    r.resolve([KEY])
    clock.now += 1.9
    r.resolve([KEY])
    assert store.calls == 1


def test_a_new_version_is_used_within_the_poll_period():
    r, store, clock = resolver(FakeModel("v1"), poll_s=2.0)
    assert r.resolve([KEY])[KEY].model.version == "v1"
    store.current = FakeModel("v2")  # retrained through the API, or by another machine
    clock.now += 1.0
    assert r.resolve([KEY])[KEY].model.version == "v1", "same version until the next check"
    clock.now += 1.0
    assert r.resolve([KEY])[KEY].model.version == "v2"


def test_missing_model_is_no_model_and_is_rechecked():
    r, store, clock = resolver(MissingModelError("no model stored for recipe 'disc-a'"))
    res = r.resolve([KEY])[KEY]
    assert res.model is None and res.failure is not None
    assert (res.failure.verdict, res.failure.error_class) == ("NO_MODEL", "MissingModelError")
    r.resolve([KEY])
    assert store.calls == 1, "negative answers are cached too"
    store.current = FakeModel("v1")
    clock.now += 2.0
    assert r.resolve([KEY])[KEY].model == FakeModel("v1"), "trained meanwhile: picked up"


def test_invalid_id_is_an_error():
    r, _, _ = resolver(InvalidIdError("recipe id '../x' is invalid"))
    res = r.resolve([KEY])[KEY]
    assert res.failure is not None
    assert (res.failure.verdict, res.failure.error_class) == ("ERROR", "InvalidIdError")


def test_an_invalid_id_in_the_headers_is_an_error_without_a_load():
    r, store, _ = resolver(FakeModel("v1"))
    res = r.resolve([("../etc", ROLE, ROI)])[("../etc", ROLE, ROI)]
    assert res.model is None and res.failure is not None
    assert (res.failure.verdict, res.failure.error_class) == ("ERROR", "InvalidIdError")
    assert store.calls == 0


def test_recipe_ids_differing_in_case_share_one_model():
    """``PLATE`` and ``plate`` are one recipe: one load, one entry, one copy in memory."""
    r, store, clock = resolver(FakeModel("v1"))
    keys = [("PLATE", ROLE, ROI), ("plate", ROLE, ROI)]
    out = r.resolve(keys)
    assert store.calls == 1 and out[keys[0]].model is out[keys[1]].model
    clock.now += 5
    r.resolve([("Plate", ROLE, ROI)])
    assert store.calls == 2  # the poll period is the model's, whatever the spelling
    assert list(r.versions()) == [f"plate/{ROLE}/{ROI}"]


def test_a_broken_new_version_keeps_the_loaded_one():
    r, store, clock = resolver(FakeModel("v1"))
    r.resolve([KEY])
    store.current = CorruptModelError("sha256 mismatch")
    clock.now += 5
    assert r.resolve([KEY])[KEY].model == FakeModel("v1")


def test_a_broken_model_without_a_previous_one_is_an_error():
    r, _, _ = resolver(CorruptModelError("sha256 mismatch"))
    res = r.resolve([KEY])[KEY]
    assert res.model is None and res.failure is not None
    assert (res.failure.verdict, res.failure.error_class) == ("ERROR", "CorruptModelError")


def test_a_deleted_model_becomes_no_model():
    r, store, clock = resolver(FakeModel("v1"))
    r.resolve([KEY])
    store.current = MissingModelError("gone")
    clock.now += 5
    assert r.resolve([KEY])[KEY].failure.verdict == "NO_MODEL"


@pytest.mark.slow
def test_hot_reload_from_a_real_store(trained, tmp_path):
    """Two ``ModelStore`` objects on one folder, as two machines sharing a store: the
    consumer's resolver sees the other's save after the poll period."""
    settings = trained.settings(models_dir=tmp_path)
    writer, reader = ModelStore(settings), ModelStore(settings)
    v1, _ = train_model(trained.engine, range(20, 32))
    v2, _ = train_model(trained.engine, range(40, 52))
    writer.save_model(writer.ref(RECIPE, ROLE, ROI), v1)
    clock = Clock()
    r = ModelResolver(reader, poll_s=2.0, clock=clock)
    assert r.resolve([KEY])[KEY].model.version == v1.version
    writer.save_model(writer.ref(RECIPE, ROLE, ROI), v2)
    assert r.resolve([KEY])[KEY].model.version == v1.version
    clock.now += 2.0
    assert r.resolve([KEY])[KEY].model.version == v2.version


# --- the working set within the model cache's budget (BDI_CACHE_MAX_MB) --------------------
class CachedStore(FakeStore):
    """A store whose loads go through a real :class:`ModelCache` (models of 40 "bytes")."""

    def __init__(self, cache: ModelCache[FakeModel]) -> None:
        super().__init__(None)
        self.cache = cache

    def load_model(self, ref):
        def load() -> tuple[int, FakeModel]:
            self.calls += 1
            return 1, FakeModel(f"{ref.roi_id}-v1")

        return self.cache.get(ref.cache_key, lambda: 1, load)


def cached(max_bytes: int, max_entries: int = 100) -> tuple[ModelResolver, CachedStore, Clock]:
    cache: ModelCache[FakeModel] = ModelCache(max_entries, max_bytes, size=lambda m: 40)
    store, clock = CachedStore(cache), Clock()
    return ModelResolver(store, 60.0, clock, cache=cache), store, clock  # type: ignore[arg-type]


def test_models_the_cache_evicted_are_released_and_loaded_again():
    """The resolver holds no model the cache let go: the budget bounds the consumer."""
    r, store, _ = cached(max_bytes=100)  # two models fit
    keys = [(RECIPE, ROLE, roi) for roi in ("a", "b", "c")]
    for key in keys:
        r.resolve([key])
    assert store.calls == 3 and len(store.cache) == 2
    assert r.resolve([keys[0]])[keys[0]].model == FakeModel("a-v1")
    assert store.calls == 4, "evicted: loaded again although its poll period has not passed"
    assert store.cache.reloads == 1
    r.resolve([keys[0]])
    assert store.calls == 4, "held by the cache: served from the resolver"
    assert set(r.versions()) == {f"{RECIPE}/{ROLE}/{roi}" for roi in "abc"}


def test_preload_stops_before_the_budget_is_exceeded():
    r, store, _ = cached(max_bytes=100)
    prepared: list[str] = []
    keys = [(RECIPE, ROLE, roi) for roi in ("a", "b", "c", "d")]
    done = r.preload(keys, lambda m: prepared.append(m.version))
    assert list(done.sizes_mb) == [f"{RECIPE}/{ROLE}/a", f"{RECIPE}/{ROLE}/b"]
    assert done.left_out == [f"{RECIPE}/{ROLE}/c", f"{RECIPE}/{ROLE}/d"]
    assert prepared == ["a-v1", "b-v1"] and store.cache.evictions == 0
    r.resolve(keys[:2])
    assert store.calls == 2, "the first frames pay for no load"


def test_preload_stops_at_the_count_cap_and_passes_over_missing_models():
    r, store, _ = cached(max_bytes=10_000, max_entries=1)
    store.load_model = lambda ref: (_ for _ in ()).throw(MissingModelError("none"))
    done = r.preload([(RECIPE, ROLE, "a")])
    assert done.sizes_mb == {} and done.left_out == []
    r2, _, _ = cached(max_bytes=10_000, max_entries=1)
    done = r2.preload([(RECIPE, ROLE, "a"), (RECIPE, ROLE, "b")])
    assert list(done.sizes_mb) == [f"{RECIPE}/{ROLE}/a"]
    assert done.left_out == [f"{RECIPE}/{ROLE}/b"]


def test_preload_keys_are_the_plans_rois_else_every_stored_model(trained, tmp_path):
    """A recipe with an inspection plan preloads its ROIs; one without, its stored models."""
    store = ModelStore(trained.settings())
    assert preload_keys(store) == [KEY]
    planned = ModelStore(trained.settings(models_dir=tmp_path))
    planned.save_plan("line-2", [PlanRoi("Master1", "top"), PlanRoi("Master2", "bottom")])
    assert preload_keys(planned) == [("line-2", "Master1", "top"), ("line-2", "Master2", "bottom")]


def test_the_processor_preloads_real_models_and_reports_their_size(trained, caplog):
    from consumers.pipeline import BatchProcessor
    from engine.footprint import resident_bytes

    settings = trained.settings()
    store = ModelStore(settings)
    processor = BatchProcessor.for_consumer(settings, trained.engine, store, "c-1")
    with caplog.at_level("INFO", logger="consumers.pipeline"):
        assert processor.preload(store) is processor
    (record,) = [r for r in caplog.records if r.getMessage() == "models preloaded"]
    name = "/".join(KEY)
    model = processor.resolver.resolve([KEY])[KEY].model
    assert model is not None and model._candidates is not None, "ready to score"
    size_mb = round(resident_bytes(model) / 1024 / 1024, 3)
    assert record.sizes_mb == {name: size_mb} and record.models == 1  # type: ignore[attr-defined]
    report = processor.report()["model_cache"]
    assert report["models_mb"] == {name: size_mb} and report["loads"] == 1
    assert report["budget_mb"] == round(store.cache.max_bytes / 1024 / 1024, 1)


@pytest.mark.kafka
@pytest.mark.slow
def test_a_consumer_loads_its_models_at_start_up_and_reports_their_size(
    kafka_broker, make_topics, trained, caplog
):
    """Over a real broker: the store's model is loaded before the group is joined, the
    frames that follow pay for no load, and /health and /metrics show its size."""
    import asyncio
    import logging

    from consumers.health import metrics_text
    from tests.helpers.images import SIZE
    from tests.helpers.kafka import answered, disc_frames, produce, read_until, running

    caplog.set_level(logging.INFO, logger="consumers")
    topics = make_topics(partitions=1)
    settings = trained.settings(**topics.settings(kafka_broker.bootstrap))
    frames = disc_frames(6, SIZE, seed=11)

    async def scenario():
        consumer = trained.consumer(settings)
        async with running(consumer) as task:
            joined = consumer.health()
            await produce(kafka_broker.bootstrap, topics.frames, frames)
            await read_until(kafka_broker.bootstrap, topics.verdicts,
                             answered({f.frame_id for f in frames}), watch=task)  # fmt: skip
            return joined, consumer.health()

    joined, after = asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert messages.index("models preloaded") < messages.index("consumer started")
    name = "/".join(KEY)
    cache = joined["model_cache"]
    assert cache["loads"] == 1 and cache["models_mb"][name] > 1.0, "loaded before any frame"
    assert after["model_cache"]["loads"] == 1 and after["model_cache"]["reloads"] == 0
    assert after["model_cache"]["resident_mb"] == cache["models_mb"][name]
    assert f'bdi_consumer_model_bytes{{model="{name}"}}' in metrics_text(after)
