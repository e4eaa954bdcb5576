"""Crash safety: a model version is visible complete or not at all.

Two angles: every individual file-system step of a write made to fail in turn (exhaustive,
in-process), and a real writer process killed with SIGKILL at random moments.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from store import ModelStore, atomic, models
from tests.helpers.paths import REPO as REPO_ROOT
from tests.helpers.store import Trained, recalibrated

ROLE, ROI = "role", "roi"


def _save(root: Path, trained: Trained) -> None:
    """Store ``trained`` as the current model of the crash tests' ids (a fresh store that
    keeps two revisions, so that every write past the second removes one)."""
    store = ModelStore(root=root, revisions_kept=2)
    store.save_artifacts(
        store.ref("crash", ROLE, ROI), trained.files, version=trained.version, mm_per_px=0.1
    )


def _visible_files_are_final(root: Path) -> None:
    """Temp names are hidden (``.…tmp``); nothing visible looks half-written."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            if ".tmp" in name:
                assert name.startswith("."), f"visible temp {dirpath}/{name}"


def _no_temps_left(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if atomic.is_temp(p.name)]
    assert not leftovers, leftovers


def _current_matches_one_of(root: Path, *candidates: Trained) -> Trained:
    """The store reads one candidate's files exactly, and loads that model."""
    store = ModelStore(root=root, legacy=False)
    loc = store.locate(store.ref("crash", ROLE, ROI))
    assert loc is not None
    stored = {s: p.read_bytes() for s, p in loc.files.items()}
    matches = [c for c in candidates if c.files == stored]
    assert len(matches) == 1, "torn model: files of different versions"
    model = store.load_model(store.ref("crash", ROLE, ROI))
    assert model.version == matches[0].version
    assert model.threshold == pytest.approx(matches[0].model.threshold)
    return matches[0]


class _Crash(BaseException):
    """Not an Exception: nothing in the store may swallow it."""


STEPS = ("replace", "rename", "link", "fsync", "unlink", "rmtree")


def _count_steps(monkeypatch: pytest.MonkeyPatch, fail_at: int) -> list[int]:
    """Make the ``fail_at``-th file-system step raise; returns a live step counter."""
    import shutil

    counter = [0]

    def wrap(module, name):
        real = getattr(module, name)

        def step(*args, **kwargs):
            counter[0] += 1
            if counter[0] == fail_at:
                raise _Crash(f"{name} #{fail_at}")
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, step)

    for name in ("replace", "rename", "link", "fsync", "unlink"):
        wrap(os, name)
    wrap(shutil, "rmtree")
    return counter


def test_every_step_of_a_write_can_fail_safely(
    tmp_path: Path,
    model_a: Trained,
    model_b: Trained,
    make_trained,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    template = tmp_path / "template"
    for old in (model_a, model_b):  # current B, previous A: the garbage collector has work
        _save(template, old)
    new = make_trained(3)

    def write_new(root: Path) -> None:
        _save(root, new)

    shutil.copytree(template, tmp_path / "count")
    with monkeypatch.context() as m:  # how many steps does one write take?
        counter = _count_steps(m, fail_at=-1)
        write_new(tmp_path / "count")
        n_steps = counter[0]
    assert n_steps > 10
    outcomes = []
    for fail_at in range(1, n_steps + 1):
        root = tmp_path / f"run{fail_at}"
        shutil.copytree(template, root)
        with monkeypatch.context() as m:
            _count_steps(m, fail_at)
            with pytest.raises(_Crash):
                write_new(root)
        _visible_files_are_final(root)
        outcomes.append(_current_matches_one_of(root, model_b, new) is new)
        write_new(root)  # the next write completes and cleans up after the crash
        _current_matches_one_of(root, new)
        ModelStore(root=root).sweep()
        _no_temps_left(root)
    assert not outcomes[0] and outcomes[-1]  # both outcomes were exercised


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from store import ModelStore

    root, src = Path(sys.argv[1]), Path(sys.argv[2])
    names = sys.argv[3:]
    files = {}
    for name in names:
        version = (src / name / "version").read_text()
        files[name] = (version, {s: (src / name / f"m{s}").read_bytes()
                                 for s in (".npz", "_index.faiss", "_calib.json")})
    store = ModelStore(root=root, legacy=False, revisions_kept=2)
    print("ready", flush=True)
    i = 0
    while True:
        version, data = files[names[i % len(names)]]
        ref = store.ref("crash", "role", "roi")
        store.save_artifacts(ref, data, version=version, mm_per_px=0.1)
        i += 1
    """
)


def _dump(trained: Trained, folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "version").write_text(trained.version)
    for suffix, data in trained.files.items():
        (folder / f"m{suffix}").write_bytes(data)


@pytest.mark.slow
def test_sigkill_while_writing_never_tears_a_model(
    tmp_path: Path, model_a: Trained, model_b: Trained
) -> None:
    root, src = tmp_path / "models", tmp_path / "src"
    # four versions written in a cycle: a recalibration (bank and index re-linked), then a
    # new model; only two revisions are kept, so every write builds a revision folder
    cycle = {
        "a1": model_a,
        "a2": recalibrated(model_a, 1e-3),
        "b1": model_b,
        "b2": recalibrated(model_b, 2e-3),
    }
    for name, trained in cycle.items():
        _dump(trained, src / name)
    _save(root, model_a)
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    seen = set()
    for _ in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(src), *cycle],
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO_ROOT,
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.15))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        _visible_files_are_final(root)
        got = _current_matches_one_of(root, *cycle.values())
        seen.add(next(name for name, c in cycle.items() if c is got))
    assert len(seen) >= 3  # the kills landed at different points of the cycle
    _save(root, model_a)
    _no_temps_left(root)
    ref = ModelStore(root=root).ref("crash", ROLE, ROI)
    assert len(list(models.versions_dir(ref.directory, ref.base_name).iterdir())) <= 2
