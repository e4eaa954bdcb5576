"""REST API fixtures: a client over a fresh store, and one whose store holds a trained model.

``make_client`` and ``live_server`` (the factories) are shared, in ``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.helpers.api import fit


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def trained(client: TestClient) -> TestClient:
    """A client whose store holds a model for ``IDS`` (OK-only threshold)."""
    response = fit(client)
    assert response.status_code == 200, response.text
    return client
