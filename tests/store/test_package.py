"""The store's import surface."""

from __future__ import annotations

import subprocess
import sys

import store
from tests.store.conftest import REPO_ROOT


def test_importing_the_store_does_not_import_torch() -> None:
    code = "import sys, store; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_errors_carry_http_statuses() -> None:
    assert store.InvalidIdError("x").status == 400
    assert store.MissingModelError("x").status == 400
    assert store.NotFoundError("x").status == 404
    assert store.ConflictError("x").status == 409
    assert store.StoreError("x", 503).status == 503
    assert issubclass(store.StoreError, ValueError)  # `bdi` reports ValueError as an error
