"""``bdi bench parts`` run tiny: its JSON has the numbers, and the counts behind them are right.

Nothing here asserts on a duration or a rate: benchmarks print numbers, tests check that
every part was decided once, correctly, and that every record was stored and answered.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import orjson
import pytest

from edge.bench.parts import run_aggregator, synth_frames
from edge.cli import main

TINY = ["bench", "parts", "--frames", "300", "--verdicts", "600", "--requests", "12",
        "--rounds", "1", "--images", "120", "--image-kb", "4", "--json"]  # fmt: skip
AGGREGATOR = [
    "parts_per_s", "frames_per_s", "verdict_frames_per_s", "aggregator_us_per_frame",
    "verdict_us_per_frame", "aggregator_vs_verdict", "table_frames_per_s",
    "changelog_bytes_per_part", "restore_records_per_s",
]  # fmt: skip
INGEST = ["records_per_s", "verdicts_per_s", "parts_per_s", "raw_records_per_s", "ingest_vs_raw"]
API = [
    "fill_verdicts_per_s", "parts_ms_p50", "parts_ms_p99", "health_ms_p50", "health_ms_p99",
    "endpoint_ms_p50", "parts_vs_health_p50", "parts_vs_endpoint_p50",
    "verdicts_ng_ms_p50", "verdicts_roi_ms_p99",
]  # fmt: skip


def _run(capsys, *extra: str) -> dict:
    assert main([*TINY, *extra]) == 0
    return orjson.loads(capsys.readouterr().out)


def _check_trace(ingest: dict, api: dict, agg: dict) -> None:
    assert all(ingest[k] > 0 for k in INGEST), ingest
    unique = agg["frames"] - agg["duplicates_sent"]
    assert ingest["verdicts"] == agg["frames"]  # every verdict record, resends included
    assert ingest["stored"]["verdicts"] == unique  # stored once each
    assert ingest["stored"]["parts"] == ingest["part_records"] == agg["parts"]
    assert ingest["stored"]["late"] == ingest["late_records"] == agg["late_records"]
    assert ingest["stored"]["conflicts"] == ingest["stored"]["bad"] == 0
    images = ingest["with_images"]
    assert (
        images["frames"] == 120 and images["frames_per_s"] > 0 and images["images_vs_without"] > 0
    )
    assert images["stored"]["frames"] == images["stored"]["verdicts"] == 120 - 1  # one resend
    assert images["stored"]["crops_ng"] >= 1  # the NG frames' crops are kept
    assert all(api[k] > 0 for k in API), api
    assert api["parts_stored"] == 100 and 590 <= api["verdicts_stored"] <= 600
    assert api["wrong_answers"] == 0  # every GET answered 200, each part with its frames


@pytest.mark.slow
def test_tiny_run_decides_every_part_once_and_stores_and_answers_everything(capsys):
    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("bdi-bench-parts-*"))
    result = _run(capsys)
    assert set(scratch.glob("bdi-bench-parts-*")) == before  # its databases are removed
    agg = result["aggregator"]
    assert all(agg[k] > 0 for k in AGGREGATOR), agg
    assert agg["frames"] == 300 + agg["duplicates_sent"]  # the one missing ROI comes late
    assert agg["parts"] == agg["part_records"] == 50
    assert agg["parts_lost"] == agg["parts_doubled"] == agg["parts_wrong"] == 0
    assert agg["part_verdicts"] == agg["expected_verdicts"] == {"INCOMPLETE": 1, "NG": 3, "OK": 46}
    assert agg["late_records"] == agg["expected_late"] == 1
    assert set(result["ingest"]) == set(result["api"]) == {"sqlite"}
    _check_trace(result["ingest"]["sqlite"], result["api"]["sqlite"], agg)
    assert result["machine"]["cpus"] >= 1


@pytest.mark.slow
def test_tiny_run_on_postgresql_works_in_its_own_schema_and_drops_it(capsys, postgres):
    import psycopg

    url = postgres.new_database()
    result = _run(capsys, "--postgres", url, "--db", "both")
    assert set(result["ingest"]) == set(result["api"]) == {"sqlite", "postgresql"}
    for db in ("sqlite", "postgresql"):
        _check_trace(result["ingest"][db], result["api"][db], result["aggregator"])
    assert result["api"]["postgresql"]["postgresql"]  # the server's version
    with psycopg.connect(url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'bdi_bench%'"
        ).fetchone()
    assert left == (0,)


def test_synthetic_parts_follow_the_stated_shares():
    frames, expected = synth_frames(6_000)
    verdicts = list(expected.verdicts.values())
    assert len(verdicts) == 1_000
    assert verdicts.count("NG") == 50 and verdicts.count("INCOMPLETE") == 20
    assert expected.late == 5  # of the 20 parts missing a ROI, 5 send it after the deadline
    assert expected.duplicates == (6_000 - 20 + 5) // 100 == len(frames) - 5_985
    assert [f.ts_ms for f in frames] == sorted(f.ts_ms for f in frames)


def test_the_aggregator_alone_counts_resends_once(capsys):
    result, run = run_aggregator(120, 4, 2)
    assert result["rounds"] == 2 and result["parts"] == result["part_records"] == 20
    assert result["parts_lost"] == result["parts_doubled"] == result["parts_wrong"] == 0
    assert sum(kind == "verdict" for kind, _ in run.records) == result["frames"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--frames", "5"], "5 is below 6"),
        (["--db", "postgresql"], "--db postgresql needs --postgres URL"),
        (["--postgres", "postgresql://nobody@127.0.0.1:1/x", "--verdicts", "0"], "PostgreSQL at"),
    ],
)
def test_bad_options_give_one_line_and_no_traceback(capsys, monkeypatch, argv, message):
    monkeypatch.delenv("BDI_TRACE_DB_URL", raising=False)
    try:
        code = main(["bench", "parts", "--frames", "60", "--requests", "2", "--rounds", "1", *argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("bdi")  # the error is one line, the last
