"""Deployment fixtures: the paths the REST API serves (the loaders are in
``tests/helpers/deploy.py``)."""

from __future__ import annotations

import pytest

from tests.helpers.settings import tiny_settings


@pytest.fixture(scope="session")
def served_paths(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every path the REST API serves (its OpenAPI paths; /health and /metrics among them)."""
    from edge.api.app import create_app

    app = create_app(tiny_settings(models_dir=tmp_path_factory.mktemp("models")))
    return set(app.openapi()["paths"])
