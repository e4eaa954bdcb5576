"""S4: NaN / inf scores and engine exceptions in the middle of a batch.

Faults are injected per frame by a marker in the frame's top-left pixel (red channel,
lossless PNG), at two depths:

- inside the real engine: the patch features of a marked frame are replaced by NaN / +inf
  (``Engine.embed`` patched on the instance), so the engine's own scoring meets them;
- at the engine's answer (an :class:`EngineProxy`): a marked frame comes back ``OK`` with a
  NaN score or an infinite threshold, or with an unknown verdict; a batch holding a marked
  frame raises (as CUDA errors do) or returns one answer too few.

Every marked frame must be ``ERROR`` (dead-lettered), every frame of a failed batch too,
never ``OK``; the other frames keep their correct verdict; nothing is committed above a
frame without a verdict.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections import defaultdict

import numpy as np
import pytest

from edge.simulator.discs import encode_png, make_ng, make_ok
from tests.helpers.images import SIZE
from tests.helpers.kafka import FrameSpec, committed, headers, produce, running
from tests.helpers.probes import EngineProxy, TopicLog, early_commits

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

NAN_FEATURES, INF_FEATURES = 251, 252  # faults inside the engine
OK_NAN_SCORE, OK_INF_THRESHOLD, UNKNOWN_VERDICT = 253, 254, 249  # faulty answers
RAISES, SHORT_ANSWER = 255, 250  # the whole batch fails
FRAME_FAULTS = [NAN_FEATURES, INF_FEATURES, OK_NAN_SCORE, OK_INF_THRESHOLD, UNKNOWN_VERDICT]
BATCH_FAULTS = [RAISES, SHORT_ANSWER]
CYCLE = [*FRAME_FAULTS, *BATCH_FAULTS]


def marker(image: np.ndarray) -> int:
    return int(image[0, 0, 0])


def frames(n: int) -> list[tuple[FrameSpec, int | None]]:
    """``n`` frames; every 5th carries a fault marker (cycling through all kinds)."""
    out = []
    for i in range(n):
        ng = i % 9 == 4
        image = (make_ng(7000 + i, SIZE) if ng else make_ok(6000 + i, SIZE)).image.copy()
        fault = CYCLE[(i // 5) % len(CYCLE)] if i % 5 == 2 else None
        image[0, 0, 0] = fault if fault is not None else min(int(image[0, 0, 0]), 200)
        fid = f"fault-{i:03d}"
        expect = "NG" if ng else "OK"
        out.append((FrameSpec(fid, encode_png(image), headers(fid), expect=expect), fault))
    return out


class FaultyAnswers(EngineProxy):
    def __init__(self, engine) -> None:
        super().__init__(engine)
        self.batches: list[list[int]] = []

    def infer(self, items):
        marks = [marker(item.image) for item in items]
        self.batches.append(marks)
        if RAISES in marks:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        results = self.engine.infer(items)
        if SHORT_ANSWER in marks:
            return results[:-1]
        out = []
        for mark, r in zip(marks, results, strict=True):
            if mark == OK_NAN_SCORE:
                r = dataclasses.replace(r, verdict="OK", score=math.nan)
            elif mark == OK_INF_THRESHOLD:
                r = dataclasses.replace(r, verdict="OK", threshold=math.inf)
            elif mark == UNKNOWN_VERDICT:
                r = dataclasses.replace(r, verdict="MAYBE")
            out.append(r)
        return out


def test_nan_inf_and_engine_exceptions_mid_batch(
    kafka_broker, make_topics, trained, monkeypatch, report
):
    topics = make_topics(partitions=1)
    boot = kafka_broker.bootstrap
    settings = trained.settings(batch_max=4, batch_wait_ms=50, **topics.settings(boot))
    specs = frames(70)
    fault_of = {spec.frame_id: fault for spec, fault in specs}
    expect = {spec.frame_id: spec.expect for spec, _ in specs}

    real_embed = trained.engine.embed

    def corrupt_embed(images, backbone, size, progress=None, dtype=None):
        feats = real_embed(images, backbone, size, dtype=dtype) if progress is None else real_embed(
            images, backbone, size, progress, dtype)  # fmt: skip
        for i, image in enumerate(images):
            if marker(image) == NAN_FEATURES:
                feats[i] = np.nan
            elif marker(image) == INF_FEATURES:
                feats[i] = np.inf
        return feats

    monkeypatch.setattr(trained.engine, "embed", corrupt_embed)
    engine = FaultyAnswers(trained.engine)

    async def scenario():
        consumer = trained.consumer(settings)
        consumer.engine = engine
        log = await TopicLog(boot, topics.verdicts).start()
        dlq = await TopicLog(boot, topics.dlq, json_values=False).start()
        async with running(consumer) as task:
            await produce(boot, topics.frames, [spec for spec, _ in specs])
            missing = await log.wait_for(set(fault_of), 120)
            assert not task.done()
        await dlq.sync()
        offsets = await committed(boot, topics.group, topics.frames)
        await log.stop()
        await dlq.stop()
        return log, dlq, missing, offsets

    log, dlq, missing, offsets = asyncio.run(scenario())
    by_id = log.by_id()
    dead = {dict(r.headers)["bdi.frame_id"].decode() for r in dlq.records}
    batch_failed = {
        v["frame_id"] for v in log.values
        if v["error_class"] == "RuntimeError" or "engine answered" in (v["error"] or "")
    }  # fmt: skip
    groups: dict[float, set[str]] = defaultdict(set)
    for v in log.values:
        groups[v["timings"]["inference_ms"]].add(v["frame_id"])
    failed_groups = [g for g in groups.values() if g & batch_failed]
    silent = [f for f, vs in by_id.items() if fault_of[f] and vs[0]["verdict"] in ("OK", "NG")]
    errors = sorted({v["error_class"] for v in log.values if v["verdict"] == "ERROR"})
    good = [f for f in by_id if not fault_of[f] and f not in batch_failed]
    wrong = [f for f in good if by_id[f][0]["verdict"] != expect[f]]
    early = early_commits(offsets, log.answered_offsets())
    names = {NAN_FEATURES: "nan_features", INF_FEATURES: "inf_features",
             OK_NAN_SCORE: "ok_with_nan_score", OK_INF_THRESHOLD: "ok_with_inf_threshold",
             UNKNOWN_VERDICT: "unknown_verdict", RAISES: "batch_raises",
             SHORT_ANSWER: "batch_short_answer"}  # fmt: skip
    outcome: dict[str, set[str]] = defaultdict(set)
    for fid, fault in fault_of.items():
        if fault is not None:
            v = by_id[fid][0]
            outcome[names[fault]].add(f"{v['verdict']}:{v['error_class']}")
    report(
        "S4", holds=not (missing or silent or wrong or early),
        frames=len(specs), faulty_frames=sum(1 for f in fault_of.values() if f),
        engine_batches=len(engine.batches), failed_batches=len(failed_groups),
        frames_in_failed_batches=len(batch_failed), error_verdicts=sum(
            1 for v in log.values if v["verdict"] == "ERROR"),
        dead_letters=len(dlq.records), silent_ok_or_ng=len(silent), lost=len(missing),
        wrong_good_verdicts=len(wrong), early_commits=len(early), error_classes=errors,
        outcome_by_fault={k: sorted(v) for k, v in outcome.items()},
    )  # fmt: skip
    assert not missing
    assert len(log.values) == len(specs), "one verdict per frame (no restart here)"
    assert not silent, silent
    for fid, fault in fault_of.items():
        if fault is not None:
            (v,) = by_id[fid]
            assert v["verdict"] == "ERROR" and v["dead_lettered"], v
            assert v["score"] is None or math.isfinite(v["score"])
            assert fid in dead
            if fault in (NAN_FEATURES, INF_FEATURES, OK_NAN_SCORE):  # KAFKA.md's policy
                assert v["error_class"] == "NonFiniteScoreError", v
    for group in failed_groups:  # a failed batch holds a batch-level fault
        assert {fault_of[f] for f in group} & set(BATCH_FAULTS), group
        assert all(by_id[f][0]["verdict"] == "ERROR" for f in group)
    assert not wrong, [(f, by_id[f][0]["verdict"], by_id[f][0]["score"]) for f in wrong]
    assert dead == {f for f, vs in by_id.items() if vs[0]["verdict"] == "ERROR"}
    assert not early and offsets == {0: len(specs)}
