"""From decoded frames to outcomes, with a stand-in engine and store: models resolved once
per batch, every ERROR / NO_MODEL dead-lettered, heatmaps only for NG."""

from __future__ import annotations

import math

import numpy as np
import orjson

from consumers.models import ModelResolver
from consumers.pipeline import BatchProcessor
from engine import Inference
from store.errors import MissingModelError
from tests.helpers.fakes import FakeModel, FakeStore, batch
from tests.helpers.images import png
from tests.helpers.settings import tiny_settings

IMAGE = png(np.full((32, 32, 3), 128, np.uint8))


class FakeEngine:
    """Answers each item from ``script`` (by position), recording the calls."""

    def __init__(self, *script: Inference | Exception) -> None:
        self.script = list(script)
        self.calls: list[list] = []

    def infer(self, items):
        self.calls.append(list(items))
        if self.script and isinstance(self.script[0], Exception):
            raise self.script[0]
        return [self.script[i % len(self.script)] for i in range(len(items))]


def processor(engine, store=None, **settings):
    s = tiny_settings(kafka_topic_verdicts="v", kafka_topic_dlq="d", **settings)
    resolver = ModelResolver(store or FakeStore(FakeModel("m1")), poll_s=60)
    return BatchProcessor(s, engine, resolver), resolver


def test_one_model_resolution_and_one_engine_call_per_batch():
    engine = FakeEngine(Inference("OK", 1.0, 5.0, model_version="m1"))
    store = FakeStore(FakeModel("m1"))
    proc, _ = processor(engine, store)
    outcomes = proc.infer(batch(IMAGE, IMAGE, IMAGE))
    assert store.calls == 1 and len(engine.calls) == 1 and len(engine.calls[0]) == 3
    assert {id(item.model) for item in engine.calls[0]} == {id(store.current)}
    assert [o.verdict.verdict for o in outcomes] == ["OK"] * 3
    rec = outcomes[0].records
    assert [r.topic for r in rec] == ["v"] and rec[0].key == b"f-0"
    assert orjson.loads(rec[0].value)["frame_id"] == "f-0"
    assert ("verdict", b"OK") in rec[0].headers


def test_mm_per_px_header_reaches_the_engine():
    engine = FakeEngine(Inference("OK", 1.0, 5.0))
    proc, _ = processor(engine)
    proc.infer(batch(IMAGE))
    assert engine.calls[0][0].mm_per_px == 0.05


def test_nan_score_becomes_error_and_dead_letter():
    proc, _ = processor(FakeEngine(Inference("OK", math.nan, 5.0, model_version="m1")))
    (o,) = proc.infer(batch(IMAGE))
    assert o.verdict.verdict == "ERROR" and o.verdict.error_class == "NonFiniteScoreError"
    assert [r.topic for r in o.records] == ["v", "d"]
    assert o.records[1].value == IMAGE


def test_bad_frames_skip_the_engine_and_good_ones_are_unaffected():
    engine = FakeEngine(Inference("NG", 9.0, 5.0, model_version="m1"))
    proc, _ = processor(engine)
    outcomes = proc.infer(batch(IMAGE, b"garbage", IMAGE))
    assert len(engine.calls[0]) == 2
    assert [o.verdict.verdict for o in outcomes] == ["NG", "ERROR", "NG"]
    assert [len(o.records) for o in outcomes] == [1, 2, 1]


def test_missing_model_is_no_model_and_dead_lettered():
    engine = FakeEngine(Inference("OK", 1.0, 5.0))
    proc, _ = processor(engine, FakeStore(MissingModelError("no model stored")))
    (o,) = proc.infer(batch(IMAGE))
    assert o.verdict.verdict == "NO_MODEL" and engine.calls == []
    assert dict(o.records[1].headers)["bdi.error.verdict"] == b"NO_MODEL"


def test_an_engine_crash_is_error_for_its_frames():
    proc, _ = processor(FakeEngine(RuntimeError("CUDA out of memory")))
    outcomes = proc.infer(batch(IMAGE, IMAGE))
    assert {(o.verdict.verdict, o.verdict.error_class) for o in outcomes} == {
        ("ERROR", "RuntimeError")
    }
    assert all(o.records[1].topic == "d" for o in outcomes)


def test_an_engine_answer_of_the_wrong_length_is_error():
    class Short(FakeEngine):
        def infer(self, items):
            return [Inference("OK", 1.0, 5.0)]

    outcomes = processor(Short())[0].infer(batch(IMAGE, IMAGE))
    assert [o.verdict.verdict for o in outcomes] == ["ERROR", "ERROR"]


def test_heatmaps_only_for_ng_when_enabled():
    amap = np.zeros((32, 32), np.float32)
    ng = Inference("NG", 9.0, 5.0, model_version="m1", anomaly_map=amap)
    ok = Inference("OK", 1.0, 5.0, model_version="m1", anomaly_map=amap)
    engine = FakeEngine(ng, ok)
    proc, _ = processor(engine, kafka_topic_heatmaps="h")
    outcomes = proc.infer(batch(IMAGE, IMAGE))
    assert all(item.want_map for item in engine.calls[0])
    assert [r.topic for r in outcomes[0].records] == ["v", "h"]
    assert outcomes[0].records[1].value.startswith(b"\x89PNG")
    assert [r.topic for r in outcomes[1].records] == ["v"]


def test_no_heatmaps_by_default():
    engine = FakeEngine(Inference("NG", 9.0, 5.0, model_version="m1"))
    proc, _ = processor(engine)
    (o,) = proc.infer(batch(IMAGE))
    assert not engine.calls[0][0].want_map and [r.topic for r in o.records] == ["v"]


def test_an_unexpected_bug_is_error_for_the_batch_not_a_crash():
    class Broken:
        def resolve(self, keys):
            raise KeyError("bug")

    proc, _ = processor(FakeEngine(Inference("OK", 1.0, 5.0)))
    proc.resolver = Broken()  # type: ignore[assignment]
    outcomes = proc.infer(batch(IMAGE, IMAGE))
    assert [(o.verdict.verdict, o.verdict.error_class) for o in outcomes] == [
        ("ERROR", "KeyError")
    ] * 2
    assert all([r.topic for r in o.records] == ["v", "d"] for o in outcomes)


def test_every_published_verdict_carries_the_processes_provenance():
    import hashlib

    from engine import EngineConfig
    from engine.provenance import code_version, settings_fingerprint

    inference = Inference("OK", 1.0, 5.0, model_version="m1", calibration_version="c1")
    proc, _ = processor(FakeEngine(inference))
    docs = [orjson.loads(o.records[0].value) for o in proc.infer(batch(IMAGE, b"garbage"))]
    fingerprint = settings_fingerprint(EngineConfig.from_settings(proc.settings))
    assert [(d["verdict"], d["calibration_version"]) for d in docs] == [
        ("OK", "c1"), ("ERROR", None)]  # fmt: skip
    assert [d["image_sha256"] for d in docs] == [
        hashlib.sha256(v).hexdigest() for v in (IMAGE, b"garbage")
    ]
    assert {(d["code_version"], d["settings_fingerprint"]) for d in docs} == {
        (code_version(), fingerprint)
    }
    other, _ = processor(FakeEngine(inference), anomaly_sigma=2.0)
    (doc,) = [orjson.loads(o.records[0].value) for o in other.infer(batch(IMAGE))]
    assert doc["settings_fingerprint"] != fingerprint
