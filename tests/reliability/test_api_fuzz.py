"""S10: schemathesis over a live server (real HTTP), valid and invalid generated requests
for every operation of the OpenAPI schema, >= 1,000 cases: no 5xx, every answer conforms
to the schema (status code, content type, body). Generation is derandomised (the same
cases every run, so that a known failure reproduces). The server's store holds a trained model
and a dataset, so generated requests reach the engine and the store."""

from __future__ import annotations

import math
from collections import Counter

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from tests.helpers.api import IDS, files
from tests.helpers.images import ok_png
from tests.helpers.probes import ProductBug

pytestmark = pytest.mark.slow

CASES = 1000
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


def _title(exc: BaseException) -> str:
    return str(getattr(exc, "title", "") or type(exc).__name__)


def test_generated_requests_never_get_5xx_and_conform(live_server, report):
    server = live_server(max_upload_mb=2)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post("/fit_ok", data={**IDS, "mm_per_px": "0.1"},
                      files=files("images", [ok_png(s) for s in range(4)]))  # fmt: skip
        assert r.status_code == 200, r.text
        r = http.post("/datasets/upload", data={**IDS, "label": "ok"},
                      files=files("images", [ok_png(9)]))  # fmt: skip
        assert r.status_code == 200, r.text
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    per_operation = math.ceil(1.3 * CASES / len(operations))  # some run out of distinct cases
    statuses: Counter[int] = Counter()
    failures: list[tuple[str, int, str]] = []
    session = requests.Session()
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @given(case=strategy)
        @settings(max_examples=per_operation, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case) -> None:
            response = case.call(base_url=server.url, session=session, timeout=60)
            statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except FailureGroup as group:  # every failing case is kept, not just the first
                label = f"{case.method.upper()} {case.path}"
                for exc in group.exceptions:
                    failures.append((label, response.status_code, _title(exc)))

        check()
    cases = sum(statuses.values())
    five_xx = sum(n for code, n in statuses.items() if code >= 500)
    kinds = Counter(f"{status} {label}: {title}" for label, status, title in failures)
    report(
        "S10", holds=cases >= CASES and not five_xx and not failures, operations=len(operations),
        cases=cases, server_errors_5xx=five_xx, conformance_failures=len(failures),
        statuses=dict(sorted(statuses.items())), failures=dict(kinds),
    )  # fmt: skip
    assert cases >= CASES, f"only {cases} cases generated"
    assert not five_xx, [f for f in failures if f[1] >= 500][:5]
    if failures:
        raise ProductBug(f"{len(failures)} answers do not match the OpenAPI schema: {dict(kinds)}")
