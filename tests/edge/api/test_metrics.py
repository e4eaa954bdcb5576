"""GET /metrics: Prometheus text format with request, inference and training counters."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.api import IDS
from tests.helpers.images import ok_png


def samples(client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.slow
def test_counts_requests_inferences_and_trainings(trained):
    trained.post("/infer", data=IDS, files={"image": ("a.png", ok_png(50))})
    trained.get("/state", params=IDS)
    trained.get("/state", params={**IDS, "recipe_id": "last"})
    m = samples(trained)
    key = ("bdi_http_requests_total", (("method", "GET"), ("route", "/state"), ("status", "400")))
    assert m[key] == 1
    assert m[("bdi_trainings_total", (("result", "ok"),))] == 1
    assert m[("bdi_inferences_total", (("verdict", "OK"),))] == 1
    fit_count = ("bdi_http_request_duration_seconds_count", (("method", "POST"),
                                                             ("route", "/fit_ok")))  # fmt: skip
    assert m[fit_count] == 1


def test_unknown_paths_share_one_label(client):
    for i in range(5):
        client.get(f"/probe/{i}")
    m = samples(client)
    key = ("bdi_http_requests_total",
           (("method", "GET"), ("route", "unmatched"), ("status", "404")))  # fmt: skip
    assert m[key] == 5
    assert not any("/probe/" in str(labels) for _, labels in m)


def test_failed_calibrations_are_counted(client):
    r = client.post("/calibrate_ng", json={**IDS, "ok_scores": [1.0]})  # no model stored
    assert r.status_code == 400
    m = samples(client)
    assert m[("bdi_calibrations_total", (("result", "error"),))] == 1
