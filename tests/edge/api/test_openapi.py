"""Property-based run over the OpenAPI schema: no 5xx, every response matches the schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from edge.api.app import create_app
from store.trace import TraceStore
from tests.helpers.api import IDS, files
from tests.helpers.images import ok_png
from tests.helpers.settings import tiny_settings


@pytest.fixture(scope="module")
def api_app(tmp_path_factory):
    """An app whose store holds a trained model and a dataset, so that the generated
    requests reach the engine and the store rather than stopping at 'missing memory'."""
    from fastapi.testclient import TestClient

    root = tmp_path_factory.mktemp("schemathesis")
    settings = tiny_settings(models_dir=root / "models", max_upload_mb=2)
    TraceStore.open(settings).close()  # an empty trace database: its endpoints answer 4xx
    app = create_app(settings)
    with TestClient(app) as client:
        r = client.post("/fit_ok", data={**IDS, "mm_per_px": "0.1"},
                        files=files("images", [ok_png(s) for s in range(4)]))  # fmt: skip
        assert r.status_code == 200, r.text
        client.post("/datasets/upload", data={**IDS, "label": "ok"},
                    files=files("images", [ok_png(9)]))  # fmt: skip
    return app


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


@pytest.mark.slow
def test_api_conforms_to_its_schema(api_app):
    """Every operation, generated valid and invalid inputs; any failure names the case."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)  # fmt: skip
        def check(case) -> None:
            case.call_and_validate(checks=CHECKS)

        check()
