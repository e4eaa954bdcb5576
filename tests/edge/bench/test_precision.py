"""``python -m edge.bench.precision`` end to end at toy size, on the real metal_plate photos."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from edge.bench import precision

TOY = ["--images", "6", "--train", "3", "--size", "64"]
SHIFT_KEYS = {
    "fitted_in", "fit_s", "reference", "other", "n", "n_defective", "threshold",
    "abs_median", "abs_p95", "abs_max", "rel_median", "rel_p95", "rel_max",
    "mean_shift", "flips", "auroc_ref", "auroc_other",
}  # fmt: skip


@pytest.mark.slow
def test_prints_one_consistent_json_object(
    metal_plate: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert precision.main(["--data", str(metal_plate), *TOY]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    result = orjson.loads(lines[0])
    assert result["n_train"] == 3 and result["size"] == 64
    assert result["weights"] == "packaged"
    for name, fitted_in, other in (("fp32_model", "float32", "bfloat16"),
                                   ("bf16_model", "bfloat16", "float32")):  # fmt: skip
        shift = result[name]
        assert set(shift) == SHIFT_KEYS
        assert shift["fitted_in"] == fitted_in
        assert shift["reference"].endswith(f"{fitted_in})")
        assert shift["other"].endswith(f"{other})")
        numbers = [v for v in shift.values() if isinstance(v, int | float)]
        assert all(math.isfinite(v) for v in numbers)
        n = shift["n"]
        assert n == 6 and 0 < shift["n_defective"] < n  # both kinds: AUROC is defined
        assert 0 <= shift["flips"] <= n
        assert 0 <= shift["abs_median"] <= shift["abs_p95"] <= shift["abs_max"]
        assert abs(shift["mean_shift"]) <= shift["abs_max"]
        assert shift["threshold"] > 0
        for k in ("median", "p95", "max"):
            assert shift[f"rel_{k}"] == pytest.approx(shift[f"abs_{k}"] / shift["threshold"],
                                                      rel=1e-4, abs=1e-9)  # fmt: skip
        assert 0 <= shift["auroc_ref"] <= 1 and 0 <= shift["auroc_other"] <= 1


def test_a_missing_data_folder_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert precision.main(["--data", str(tmp_path / "nowhere"), *TOY]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and "MVTec" in captured.err
    assert len(captured.err.splitlines()) == 1
