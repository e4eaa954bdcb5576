"""A grey frame for a model of colour images, through the consumer's batch processing with
the real engine: an ERROR verdict naming the mismatch, dead-lettered; its batch-mates scored."""

from __future__ import annotations

import cv2
import orjson

from consumers.models import ModelResolver
from consumers.pipeline import BatchProcessor
from edge.simulator.discs import make_ok
from engine import Engine
from tests.helpers.fakes import FakeStore, batch
from tests.helpers.images import SIZE, ok_png, png
from tests.helpers.settings import tiny_settings


def test_a_grey_frame_for_a_colour_model_is_an_error_verdict_with_the_reason() -> None:
    settings = tiny_settings(kafka_topic_verdicts="v", kafka_topic_dlq="d")
    engine = Engine.from_settings(settings)
    model = engine.fit([make_ok(seed, SIZE).image for seed in range(4)]).model
    grey = png(cv2.cvtColor(make_ok(100, SIZE).image, cv2.COLOR_RGB2GRAY))
    frames = batch(*(grey, ok_png(101)))
    proc = BatchProcessor(settings, engine, ModelResolver(FakeStore(model), poll_s=60))
    refused, scored = proc.infer(frames)
    assert refused.verdict.verdict == "ERROR"
    assert refused.verdict.error == (
        "ChannelMismatchError: model trained on colour images, frame is grey"
    )
    assert [r.topic for r in refused.records] == ["v", "d"]
    assert orjson.loads(refused.records[0].value)["error"] == refused.verdict.error
    assert scored.verdict.verdict in ("OK", "NG") and scored.verdict.error is None
