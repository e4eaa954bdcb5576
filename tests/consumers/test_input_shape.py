"""A frame of another shape than its "aspect" model's, through the consumer's batch
processing with the real engine: an ERROR verdict naming the mismatch, dead-lettered; its
batch-mates scored."""

from __future__ import annotations

import orjson

from consumers.models import ModelResolver
from consumers.pipeline import BatchProcessor
from edge.simulator.discs import make_ok
from engine import Engine
from tests.helpers.fakes import FakeStore, batch
from tests.helpers.images import SIZE, ok_png, png
from tests.helpers.settings import tiny_settings


def test_a_frame_of_another_shape_is_an_error_verdict_with_the_reason() -> None:
    settings = tiny_settings(kafka_topic_verdicts="v", kafka_topic_dlq="d", input_mode="aspect")
    engine = Engine.from_settings(settings)
    model = engine.fit([make_ok(seed, SIZE).image[: SIZE // 2] for seed in range(4)]).model
    frames = batch(*(ok_png(100), png(make_ok(101, SIZE).image[: SIZE // 2])))
    proc = BatchProcessor(settings, engine, ModelResolver(FakeStore(model), poll_s=60))
    refused, scored = proc.infer(frames)
    assert refused.verdict.verdict == "ERROR"
    assert refused.verdict.error is not None
    assert refused.verdict.error.startswith(f"ShapeMismatchError: frame of {SIZE}x{SIZE} px")
    assert [r.topic for r in refused.records] == ["v", "d"]
    assert orjson.loads(refused.records[0].value)["error"] == refused.verdict.error
    assert scored.verdict.verdict in ("OK", "NG") and scored.verdict.error is None
