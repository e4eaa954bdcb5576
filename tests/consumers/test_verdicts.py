"""Verdict building and serialisation; a failure or a non-finite score is never OK."""

from __future__ import annotations

import math

import orjson
import pytest

from consumers.frames import Decoded, Failure, frame_from_record
from consumers.verdicts import SCHEMA, Timings, VerdictMessage, build_verdict, inference_failure
from engine import Inference
from engine.provenance import Provenance
from engine.regions import Region, area_mm2
from tests.helpers.fakes import GOOD, Record

T = Timings(queue_ms=1.23456, decode_ms=0.5, inference_ms=10.0, total_ms=12.0)
PROVENANCE = Provenance(code_version="0.1.0+gabc", settings_fingerprint="f00d")
SHA = "ab" * 32


def build(*args, **kwargs) -> VerdictMessage:
    return build_verdict(*args, provenance=PROVENANCE, **kwargs)


def decoded(headers=None) -> Decoded:
    frame = frame_from_record(Record(headers=list(GOOD if headers is None else headers)), 1)
    return Decoded(frame, None, frame.failure, image_sha256=SHA)


def region() -> Region:
    return Region(bbox=(3, 4, 10, 6), area_px=42, area_mm2=0.105, max_score=31.5, mean_score=29.0)


def test_ng_verdict_serialises_every_field():
    inf = Inference("NG", 31.5, 24.0, [region()], model_version="abc123")
    v = build(decoded(), inf, None, T)
    data = orjson.loads(v.to_json())
    assert data["schema"] == SCHEMA
    assert data["frame_id"] == "f-1" and data["frame_id_derived"] is False
    assert (data["recipe_id"], data["role_id"], data["roi_id"], data["part_id"]) == (
        "Disc-A",
        "Master1",
        "inspection-1",
        "SN-42",
    )
    assert (data["verdict"], data["score"], data["threshold"]) == ("NG", 31.5, 24.0)
    assert data["model_version"] == "abc123"
    assert data["regions"] == [
        {"bbox": [3, 4, 10, 6], "area_px": 42, "area_mm2": 0.105, "max_score": 31.5,
         "mean_score": 29.0}
    ]  # fmt: skip
    assert data["regions_total"] == 1
    assert data["source"] == {"topic": "bdi.frames", "partition": 3, "offset": 17}
    assert data["timings"] == {
        "queue_ms": 1.235,
        "decode_ms": 0.5,
        "inference_ms": 10.0,
        "total_ms": 12.0,
    }
    assert data["error"] is None and data["error_class"] is None
    assert data["dead_lettered"] is False
    assert data["produced_at"].endswith("+00:00")


def test_ok_verdict():
    v = build(decoded(), Inference("OK", 3.0, 24.0, model_version="m"), None, T)
    assert (v.verdict, v.regions, v.error) == ("OK", [], None)


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf, None])
@pytest.mark.parametrize("engine_verdict", ["OK", "NG"])
def test_a_non_finite_score_is_an_error_never_ok(engine_verdict, score):
    inf = Inference(engine_verdict, score, 24.0, [region()], model_version="m")
    v = build(decoded(), inf, None, T)
    assert v.verdict == "ERROR" and v.error_class == "NonFiniteScoreError"
    assert v.score is None and v.regions == [] and v.dead_lettered
    assert orjson.loads(v.to_json())["score"] is None  # valid JSON: no NaN literal


def test_the_engines_own_non_finite_finding_keeps_its_error_class():
    inf = Inference("ERROR", None, 24.0, error="non-finite anomaly score",
                    error_kind="NonFiniteScoreError", model_version="m")  # fmt: skip
    v = build(decoded(), inf, None, T)
    assert (v.verdict, v.error_class, v.error) == (
        "ERROR", "NonFiniteScoreError", "non-finite anomaly score")  # fmt: skip
    assert v.dead_lettered
    other = Inference("ERROR", None, 24.0, error="GridMismatchError: 16x16",
                      error_kind="GridMismatchError")  # fmt: skip
    assert build(decoded(), other, None, T).error_class == "InferenceError"


def test_a_missing_threshold_is_an_error():
    v = build(decoded(), Inference("OK", 3.0, math.nan, model_version="m"), None, T)
    assert v.verdict == "ERROR" and v.error_class == "InvalidThresholdError"


def test_engine_error_and_no_model_pass_through():
    err = build(decoded(), Inference("ERROR", None, 5.0, error="boom"), None, T)
    assert (err.verdict, err.error_class, err.error) == ("ERROR", "InferenceError", "boom")
    nom = build(decoded(), Inference("NO_MODEL", 3.0, None, error="not calibrated"), None, T)
    assert (nom.verdict, nom.error_class) == ("NO_MODEL", "UncalibratedModelError")


def test_an_unknown_engine_verdict_is_an_error():
    assert inference_failure(Inference("MAYBE", 1.0, 2.0)).error_class == "InferenceError"  # type: ignore[arg-type]


def test_a_failure_wins_over_any_inference():
    failure = Failure("ImageDecodeError", "cannot decode PNG data")
    v = build(decoded(), Inference("OK", 1.0, 24.0), failure, T)
    assert (v.verdict, v.error_class, v.error) == (
        "ERROR",
        "ImageDecodeError",
        "cannot decode PNG data",
    )
    no_model = build(decoded(), None, Failure("MissingModelError", "none", "NO_MODEL"), T)
    assert no_model.verdict == "NO_MODEL" and no_model.dead_lettered


def test_no_inference_and_no_failure_is_an_error():
    assert build(decoded(), None, None, T).verdict == "ERROR"


def test_derived_frame_id_is_flagged():
    v = build(decoded(GOOD[1:]), None, Failure("MissingHeaderError", "frame_id"), T)
    data = orjson.loads(v.to_json())
    assert data["frame_id"] == "bdi.frames:3:17" and data["frame_id_derived"] is True


def test_regions_are_capped_largest_first():
    regions = [region()] * 50
    v = build(decoded(), Inference("NG", 40.0, 24.0, regions, model_version="m"), None, T)
    assert len(v.regions) == 32 and v.regions_total == 50


def test_region_without_scale_has_null_area_mm2():
    r = Region(bbox=(0, 0, 1, 1), area_px=1, area_mm2=None, max_score=30.0, mean_score=30.0)
    v = build(decoded(), Inference("NG", 30.0, 24.0, [r], model_version="m"), None, T)
    assert v.regions[0]["area_mm2"] is None


def test_a_region_reads_the_same_over_kafka_and_rest():
    """One serialisation: the verdict's regions have the REST schema's fields and values,
    areas without floating-point noise."""
    from edge.api.service import regions_public

    r = Region(bbox=(3, 4, 101, 11), area_px=1111, area_mm2=area_mm2(1111, 0.1),
               max_score=31.5, mean_score=29.0)  # fmt: skip
    inference = Inference("NG", 33.0, 24.0, [r], model_version="m")
    (kafka,) = orjson.loads(build(decoded(), inference, None, T).to_json())["regions"]
    (rest,) = [orjson.loads(p.model_dump_json()) for p in regions_public(inference)]
    assert kafka == rest
    assert set(kafka) == {"bbox", "area_px", "area_mm2", "max_score", "mean_score"}
    assert kafka["area_mm2"] == 11.11  # 1111 * 0.1**2 is 11.110000000000003 in floats


PROVENANCE_FIELDS = ["calibration_version", "image_sha256", "code_version", "settings_fingerprint"]


def test_every_verdict_carries_its_provenance_after_the_model_version():
    inf = Inference("NG", 31.5, 24.0, [region()], model_version="m1", calibration_version="c1")
    data = orjson.loads(build(decoded(), inf, None, T).to_json())
    names = list(data)
    at = names.index("model_version")
    assert names[at + 1 : at + 5] == PROVENANCE_FIELDS
    assert [data[n] for n in ["model_version", *PROVENANCE_FIELDS]] == [
        "m1", "c1", SHA, "0.1.0+gabc", "f00d"]  # fmt: skip


def test_a_failed_frame_names_its_image_code_and_settings_but_no_calibration():
    for verdict in (
        build(decoded(), None, Failure("MissingModelError", "none", "NO_MODEL"), T),
        build(decoded(), None, Failure("ImageDecodeError", "not an image"), T),
        build(decoded(GOOD[1:]), None, Failure("MissingHeaderError", "frame_id"), T),
    ):
        data = orjson.loads(verdict.to_json())
        assert data["verdict"] in ("ERROR", "NO_MODEL")
        assert data["calibration_version"] is None and data["model_version"] is None
        assert (data["image_sha256"], data["code_version"], data["settings_fingerprint"]) == (
            SHA, "0.1.0+gabc", "f00d")  # fmt: skip


def test_an_engine_error_keeps_the_models_calibration_version():
    inf = Inference("ERROR", None, 24.0, error="non-finite anomaly score",
                    error_kind="NonFiniteScoreError", model_version="m",
                    calibration_version="c")  # fmt: skip
    v = build(decoded(), inf, None, T)
    assert (v.verdict, v.model_version, v.calibration_version) == ("ERROR", "m", "c")
