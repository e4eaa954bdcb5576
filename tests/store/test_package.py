"""The store's import surface."""

from __future__ import annotations

import subprocess
import sys

import store
from tests.helpers.paths import REPO as REPO_ROOT


def test_importing_the_store_does_not_import_torch() -> None:
    code = "import sys, store; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_errors_know_nothing_of_http() -> None:
    """The HTTP status of each error class is the REST API's table (edge/api/errors.py)."""
    for cls in (store.InvalidIdError, store.MissingModelError, store.NotFoundError):
        assert not hasattr(cls("x"), "status")
    assert issubclass(store.StoreError, ValueError)  # `bdi` reports ValueError as an error
