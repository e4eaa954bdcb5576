"""The drift test on conformal p-values: no alarm on a stable stream, one alarm (start and
end) per shift, and what the consumer shows of it (verdict flag, alerts, health, state)."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import orjson
import pytest

from consumers.drift import ALERT_SCHEMA, DriftMonitor, metrics_lines
from consumers.drift_detectors import AdwinDetector, MartingaleDetector
from consumers.drift_state import DriftStateFile, read_drift
from consumers.health import metrics_text
from tests.helpers.kafka import RECIPE, ROI, ROLE

KEY = ("disc-a", "master1", "inspection-1")
KEY_OF_TRAINED = (RECIPE, ROLE, ROI)  # the session's trained model (tests/conftest.py)


class Line:
    """Image scores ``N(shift, 1)`` and their conformal p-values against ``n_cal`` calibration
    scores ``N(0, 1)`` drawn once: (super-)uniform at ``shift`` 0, small when shifted."""

    def __init__(self, seed: int, n_cal: int = 100) -> None:
        self.rng = np.random.default_rng(seed)
        self.cal = np.sort(self.rng.normal(size=n_cal))

    def __call__(self, n: int, shift: float = 0.0) -> np.ndarray:
        scores = self.rng.normal(loc=shift, size=n)
        at_or_above = len(self.cal) - np.searchsorted(self.cal, scores, side="left")
        return (1 + at_or_above) / (len(self.cal) + 1)


def changes(detector, stream) -> list[tuple[int, str]]:
    return [(i, c) for i, p in enumerate(stream) if (c := detector.update(p)) is not None]


@pytest.mark.parametrize("make", [AdwinDetector, MartingaleDetector])
@pytest.mark.parametrize("n_cal", [20, 200])
def test_10000_stable_frames_raise_no_alarm(make, n_cal):
    line = Line(n_cal, n_cal=n_cal)
    assert changes(make(), line(10_000)) == []
    assert changes(make(), line.rng.uniform(size=10_000)) == []


@pytest.mark.parametrize("make", [AdwinDetector, MartingaleDetector])
def test_a_shift_starts_one_drift_and_the_return_to_normal_ends_it(make):
    line = Line(7)
    stream = np.concatenate([line(1000), line(600, shift=2.0), line(2000)])
    seen = changes(make(), stream)
    assert [c for _, c in seen] == ["started", "ended"]
    (start, _), (end, _) = seen
    assert 1000 <= start < 1000 + 150  # within 150 frames of the shift
    assert 1600 <= end < 1600 + 600


@pytest.mark.parametrize("shift", [1.5, 2.0])
def test_a_line_already_shifted_when_the_consumer_starts_is_seen(shift):
    """No change inside the stream for ADWIN to cut at: the window's mean p-value, far below
    the 1/2 of a line that matches calibration, starts the drift; the return ends it."""
    line = Line(11)
    stream = np.concatenate([line(400, shift=shift), line(2000)])
    seen = changes(AdwinDetector(), stream)
    assert [c for _, c in seen] == ["started", "ended"]
    (start, _), (end, _) = seen
    assert start < 150 and 400 <= end < 400 + 600


def test_an_all_ng_shift_is_seen_too():
    """Every frame NG (p-values at the floor 1/(n+1)): the monitor is fed NG frames too."""
    monitor = DriftMonitor("adwin", "alerts")
    line = Line(3)
    for p in line.rng.uniform(size=500):
        monitor.observe(KEY, "v1", float(p))
    flags = [monitor.observe(KEY, "v1", 1 / 101)[0] for _ in range(200)]
    assert flags[-1] and flags.index(True) < 100


def _drive(monitor, stream, version="v1"):
    out = []
    for p in stream:
        drift, records = monitor.observe(KEY, version, float(p))
        out.append((drift, records))
    return out


def test_the_monitor_flags_verdicts_and_emits_one_alert_per_start_and_end():
    monitor = DriftMonitor("adwin", "bdi.alerts")
    line = Line(11)
    stream = np.concatenate([line(800), line(400, shift=2.0), line(1500)])
    out = _drive(monitor, stream)
    alerts = [r for _, records in out for r in records]
    assert [orjson.loads(r.value)["state"] for r in alerts] == ["started", "ended"]
    first = orjson.loads(alerts[0].value)
    assert alerts[0].topic == "bdi.alerts" and alerts[0].key == b"disc-a/master1/inspection-1"
    assert first["schema"] == ALERT_SCHEMA and first["kind"] == "drift"
    assert first["model_version"] == "v1" and 800 < first["frames"] < 1000
    assert set(first) >= {"statistic", "detector", "produced_at", "recipe_id", "roi_id"}
    flags = [d for d, _ in out]
    assert not any(flags[:800]) and any(flags[800:1200]) and not flags[-1]
    # the frame that raised the alert carries the flag
    raised = next(i for i, (_, r) in enumerate(out) if r)
    assert flags[raised] and not flags[raised - 1]


def test_errors_carry_their_models_flag_and_a_new_version_ends_the_drift():
    monitor = DriftMonitor("adwin", "a")
    line = Line(5)
    _drive(monitor, np.concatenate([line(600), line(300, shift=3.0)]))
    assert monitor.observe(KEY, None, None) == (True, [])  # an ERROR frame of this model
    assert monitor.observe(("x", "y", "z"), None, None) == (False, [])
    drift, records = monitor.observe(KEY, "v2", 0.5)
    assert not drift and len(records) == 1
    ended = orjson.loads(records[0].value)
    assert ended["state"] == "ended" and ended["reason"] == "new model version"
    assert ended["model_version"] == "v1"
    assert monitor.snapshot()["disc-a/master1/inspection-1"]["model_version"] == "v2"


def test_off_monitors_nothing():
    monitor = DriftMonitor("off", "a")
    assert _drive(monitor, [1e-3] * 500)[-1] == (False, [])
    assert monitor.snapshot() == {}


def test_frames_naming_a_model_differently_share_its_monitor():
    monitor = DriftMonitor("adwin", "a", canonical=lambda k: (k[0].lower(), k[1], k[2]))
    monitor.observe(("DISC-A", *KEY[1:]), "v1", 0.5)
    monitor.observe(KEY, "v1", 0.5)
    assert monitor.snapshot()["disc-a/master1/inspection-1"]["frames"] == 2


def test_gauges_and_health_metrics():
    monitor = DriftMonitor("adwin", "a")
    _drive(monitor, [0.5] * 50)
    snap = monitor.snapshot()
    lines = metrics_lines(snap)
    assert 'bdi_drift{recipe_id="disc-a",role_id="master1",roi_id="inspection-1"} 0' in lines
    text = metrics_text({"ready": True, "verdicts": {}, "batches": 0, "lag": {},
                         "last_commit_at": None, "drift": snap})  # fmt: skip
    assert "bdi_drift_statistic{" in text


def test_the_state_file_is_written_atomically_read_per_model_and_removed(tmp_path):
    state = DriftStateFile(tmp_path, "bdi-host-1/2")
    monitor = DriftMonitor("adwin", "a", state=state)
    line = Line(2)
    _drive(monitor, np.concatenate([line(600), line(300, shift=3.0)]))
    monitor.save()
    (report,) = read_drift(tmp_path, "disc-a/master1/inspection-1")
    assert report["drift"] is True and report["consumer"] == "bdi-host-1/2"
    assert report["model_version"] == "v1" and report["frames"] == 900
    assert read_drift(tmp_path, "other/role/roi") == []
    (tmp_path / ".drift" / "broken.json").write_bytes(b"{not json")
    assert len(read_drift(tmp_path, "disc-a/master1/inspection-1")) == 1
    monitor.close()
    assert not state.path.exists()


def test_verdicts_carry_p_value_and_drift():
    from consumers.frames import Decoded, Failure, frame_from_record
    from consumers.verdicts import Timings, build_verdict
    from engine import Inference
    from engine.provenance import Provenance
    from tests.helpers.fakes import GOOD, Record

    frame = frame_from_record(Record(headers=list(GOOD)), 1)
    d = Decoded(frame, None, None, image_sha256="ab" * 32)
    t, prov = Timings(1.0, 1.0, 1.0, 1.0), Provenance("0.1.0", "f00d")
    inf = Inference("OK", 1.0, 2.0, model_version="v1", p_value=0.25)
    data = orjson.loads(build_verdict(d, inf, None, t, provenance=prov, drift=True).to_json())
    assert (data["p_value"], data["drift"]) == (0.25, True)
    legacy = dataclasses.replace(inf, p_value=None)
    data = orjson.loads(build_verdict(d, legacy, None, t, provenance=prov).to_json())
    assert (data["p_value"], data["drift"]) == (None, False)
    failed = build_verdict(d, inf, Failure("InferenceError", "boom"), t, provenance=prov)
    assert failed.p_value is None  # no p-value beside an ERROR


# --- through a real broker ------------------------------------------------------------------
class ScriptedPValues:
    """The session's engine (start-up checks, scores), with each frame's p-value taken from
    ``script`` in the order frames are scored (one partition: the order they were sent)."""

    def __init__(self, engine, script) -> None:
        self.engine = engine
        self.script = iter(script)

    def infer(self, items):
        from engine import Inference

        return [
            Inference("OK", 1.0, 2.0, model_version=item.model.version,
                      calibration_version=item.model.calibration_version,
                      p_value=float(next(self.script)))
            for item in items
        ]  # fmt: skip

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.mark.kafka
@pytest.mark.slow
def test_a_shifted_stream_flags_verdicts_and_sends_started_and_ended_alerts(tansu_broker, trained):
    from consumers import FrameConsumer
    from consumers.topics import ensure_topics
    from edge.simulator.discs import encode_png
    from store import ModelStore
    from tests.helpers.consumer import GROUP_OPTIONS
    from tests.helpers.kafka import (
        FrameSpec,
        headers,
        parse,
        produce,
        read_until,
        running,
        topic_maker,
    )

    bootstrap = tansu_broker.bootstrap
    topics = topic_maker(tansu_broker)(partitions=1)
    alerts_topic = f"{topics.frames}.alerts"
    asyncio.run(ensure_topics(bootstrap, {alerts_topic: 1}))
    settings = trained.settings(kafka_topic_alerts=alerts_topic, **topics.settings(bootstrap))
    line = Line(21)
    script = np.concatenate([line(500), line(300, shift=3.0), line(700)])
    png = encode_png(np.full((32, 32, 3), 128, np.uint8))
    frames = [FrameSpec(f"d-{i:05d}", png, headers(f"d-{i:05d}")) for i in range(len(script))]
    engine = ScriptedPValues(trained.engine, script)
    consumer = FrameConsumer(settings, engine=engine, consumer_options=dict(GROUP_OPTIONS))
    ref = ModelStore(settings).ref(*KEY_OF_TRAINED)
    key = "/".join((ref.recipe_id, ref.role_id, ref.roi_id))

    def all_answered(records):
        return len({r.key for r in records}) >= len(frames)

    async def scenario():
        async with running(consumer) as task:
            await produce(bootstrap, topics.frames, frames)
            verdicts = await read_until(bootstrap, topics.verdicts, all_answered, watch=task)
            alerts = await read_until(bootstrap, alerts_topic, lambda r: len(r) >= 2, watch=task)
            return verdicts, alerts, consumer.health()

    verdicts, alerts, health = asyncio.run(scenario())
    by_id = {v["frame_id"]: v for v in parse(verdicts)}
    flags = [by_id[f.frame_id]["drift"] for f in frames]
    assert not any(flags[:500]) and any(flags[500:800]) and not flags[-1]
    assert by_id["d-00000"]["p_value"] == pytest.approx(script[0])
    assert [a["state"] for a in parse(alerts)] == ["started", "ended"]
    assert {r.key.decode() for r in alerts} == {key}
    assert all(a["schema"] == ALERT_SCHEMA and a["kind"] == "drift" for a in parse(alerts))
    assert health["drift"][key]["frames"] == len(frames)
    assert not health["drift"][key]["drift"]
