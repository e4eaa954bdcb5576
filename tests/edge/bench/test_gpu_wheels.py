"""The GPU check's wheel list covers every distribution the check imports that the GPU
machine lacks, so that its one run does not end at an ImportError."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

import pytest

from edge.bench import gpu_wheels
from tests.helpers.paths import REPO

FIRST_PARTY = {"bdi-edge"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_distributions() -> set[str]:
    """Distributions of every module that importing the check loads (in a fresh process)."""
    code = (
        "import sys; from importlib import metadata; import edge.bench.gpu_check\n"
        "pd = metadata.packages_distributions()\n"
        "tops = {m.split('.')[0] for m in list(sys.modules)}\n"
        "print('\\n'.join(d for t in tops if t not in sys.stdlib_module_names "
        "for d in pd.get(t, [])))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True)  # fmt: skip
    return {_norm(d) for d in run.stdout.split()}


def _with_requirements(names: set[str]) -> set[str]:
    """``names`` and everything they require, transitively (as installed here)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            todo.append(_norm(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0]))
    return seen


@pytest.mark.slow
def test_the_wheels_and_the_machine_cover_every_import() -> None:
    covered = _with_requirements({_norm(n) for n in gpu_wheels.ON_THE_MACHINE})
    covered |= {_norm(n) for n in gpu_wheels.NEEDED} | FIRST_PARTY
    missing = _imported_distributions() - covered
    assert not missing, f"add to gpu_wheels.NEEDED (or check the machine has): {missing}"


def test_the_wheels_are_pinned_to_the_versions_tested_here() -> None:
    pins = gpu_wheels.pinned()
    assert len(pins) == len(gpu_wheels.NEEDED)
    for pin in pins:
        name, version = pin.split("==")
        assert version == metadata.version(name)
