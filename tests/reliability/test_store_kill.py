"""S7: a writer process SIGKILLed at random moments while it saves models (new versions and
recalibrations, through ``ModelStore.save_model``) or changes a dataset (``add_image``,
``delete_image``, ``clear``), 20 times each. After every kill a fresh store loads one
complete known version (its content hash recomputed from the bank it read), every listed
dataset image has its sidecar and matches the sha256 recorded there, no temp file is
visible, and ``store.sweep()`` leaves none. Meanwhile a reader thread loads the model the
way a consumer does (one store, its cache, ``load_model`` in a loop): it never gets a torn
model.

The writers are forked from one pre-imported process (``ZYGOTE``), so that each trial costs
the write, not a Python start-up; the test kills the forked writer itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.simulator.discs import make_ok
from engine.patchcore import content_version
from store import ModelStore, atomic
from tests.helpers.images import SIZE
from tests.helpers.probes import ProductBug

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TRIALS = 20
IDS = ("crash", "role", "roi")

ZYGOTE = """
import os, sys
from pathlib import Path
import numpy as np
from store import ModelStore

target, source = Path(sys.argv[1]), Path(sys.argv[2])
src = ModelStore(root=source, legacy=False)
models = [src.load_model(src.ref("src", "role", f"m{i}")) for i in range(4)]
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
ids = ("crash", "role", "roi")

def write_models(store):
    i = 0
    while True:
        store.save_model(store.ref(*ids), models[i % len(models)])
        i += 1

def write_dataset(store):
    i = 0
    while True:
        label = "ng" if i % 3 == 0 else "ok"
        store.datasets.add(store.ref(*ids), label, images[i % 8], source=f"{i}.png")
        if i % 5 == 4:
            ok = store.datasets.list_images(store.ref(*ids), "ok")["ok"]
            if ok:
                store.datasets.delete(store.ref(*ids), "ok", ok[0].name)
        if i % 17 == 16:
            store.datasets.clear(store.ref(*ids), "ng")
        i += 1

def clear_many(store):
    while True:
        for i in range(400):
            store.datasets.add(store.ref(*ids), "ng", images[i % 8])
        store.datasets.clear(store.ref(*ids), "ng")

WRITERS = {"model": write_models, "dataset": write_dataset, "clear": clear_many}
print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            WRITERS[line.strip()](ModelStore(root=target, legacy=False))
        finally:
            os._exit(1)  # a writer that stops by itself failed
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


class Zygote:
    def __init__(self, target: Path, source: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, str(target), str(source)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.readline() == "ready"

    def readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().decode().strip()

    def kill_writer_after(self, kind: str, seconds: float) -> None:
        self.kill_writer_when(kind, lambda: None, seconds)

    def kill_writer_when(self, kind: str, ready: Callable[[], object], timeout_s: float) -> None:
        """Start a ``kind`` writer; SIGKILL it once ``ready()`` is true, or after the timeout."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{kind}\n".encode())
        self.proc.stdin.flush()
        pid = int(self.readline())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not ready():
            time.sleep(0.0005)
        os.kill(pid, signal.SIGKILL)
        status = int(self.readline())
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def cycle_models(engine) -> list:
    """Two models and a recalibration of each: new revisions of both kinds."""
    out = []
    for seed in (1, 2):
        fit = engine.fit([make_ok(8000 + 10 * seed + i, SIZE).image for i in range(4)], 0.1)
        model = fit.model
        out.append(model)
        calibration = dataclasses.replace(model.calibration, threshold=123.0 + seed)
        out.append(dataclasses.replace(model, calibration=calibration))
    return out


def visible_temps(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if ".tmp" in p.name and not p.name.startswith(".")]


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if atomic.is_temp(p.name)]


class TornModel(AssertionError):  # noqa: N818
    """A loaded model that is none of the stored versions (mixed or missing files)."""


def load_checked(store: ModelStore, known: dict[tuple[str, float], int]) -> tuple[str, float]:
    """Load the current model; :class:`TornModel` unless it is exactly one known version
    (bank hash recomputed from what was read, threshold = that version's)."""
    model = store.load_model(store.ref(*IDS))
    threshold = None if model.threshold is None else float(model.threshold)
    pair = (model.version, threshold)
    recomputed = content_version(model.meta, model.index.bank(), model.baseline)
    if pair not in known or recomputed != model.version:
        raise TornModel(f"torn model: version {model.version}, threshold {threshold}, "
                        f"bank hash {recomputed}")  # fmt: skip
    return pair  # type: ignore[return-value]


@pytest.fixture
def stores(trained, tmp_path):
    """``(zygote, root, known)``: the writer factory, the store root, the known versions."""
    source, root = tmp_path / "source", tmp_path / "models"
    models = cycle_models(trained.engine)
    src, dst = ModelStore(root=source, legacy=False), ModelStore(root=root, legacy=False)
    for i, model in enumerate(models):
        src.save_model(src.ref("src", "role", f"m{i}"), model)
    known = {(m.version, float(m.threshold)): i for i, m in enumerate(models)}
    dst.save_model(dst.ref(*IDS), models[0])
    zygote = Zygote(root, source)
    yield zygote, root, known
    zygote.close()


def test_sigkill_while_writing_models(stores, report):
    zygote, root, known = stores
    rng = random.Random(7)
    reads: Counter[str] = Counter()
    stop = threading.Event()

    def consumer_reads() -> None:
        store = ModelStore(root=root, legacy=False)  # one store and its cache, as a consumer
        while not stop.is_set():
            try:
                load_checked(store, known)
                reads["complete"] += 1
            except TornModel:
                reads["torn"] += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                reads[type(exc).__name__] += 1

    reader = threading.Thread(target=consumer_reads, daemon=True)
    reader.start()
    current: Counter[int] = Counter()
    torn = visible = 0
    left: set[Path] = set()
    try:
        for _ in range(TRIALS):
            zygote.kill_writer_after("model", rng.uniform(0.02, 0.6))
            visible += len(visible_temps(root))
            try:
                current[known[load_checked(ModelStore(root=root, legacy=False), known)]] += 1
            except TornModel:
                torn += 1
            ModelStore(root=root, legacy=False).sweep()
            left |= set(temps(root))
    finally:
        stop.set()
        reader.join(30)
    report(
        "S7", holds=not (torn or reads["torn"] or visible or left), kills=TRIALS,
        torn_models_after_kill=torn, current_version_after_kill=dict(sorted(current.items())),
        concurrent_consumer_reads=dict(reads), visible_temp_files=visible,
        temps_after_sweep=len(left),
    )  # fmt: skip
    assert torn == 0
    assert reads["complete"] > 0, reads
    # torn concurrent reads are a reader race (not the kills'): reproduced deterministically
    # by test_a_model_rewritten_twice_while_a_consumer_loads_it, so only recorded here
    assert len(current) >= 3, current  # the kills landed at different points of the cycle
    assert visible == 0 and not left


def test_sigkill_while_writing_datasets(stores, report):
    zygote, root, _ = stores
    rng = random.Random(8)
    images = torn = visible = 0
    left: set[Path] = set()
    for _ in range(TRIALS):
        zygote.kill_writer_after("dataset", rng.uniform(0.02, 0.4))
        visible += len(visible_temps(root))
        store = ModelStore(root=root, legacy=False)
        for label, items in store.datasets.list_images(store.ref(*IDS), with_meta=True).items():
            for item in items:
                images += 1
                data = store.datasets.read(store.ref(*IDS), label, item.name)
                decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                if decoded is None or item.meta.get("sha256") != hashlib.sha256(data).hexdigest():
                    torn += 1
        store.sweep()
        left |= set(temps(root))
    # and one kill aimed at clear(): as soon as the label folder is renamed for deletion
    store = ModelStore(root=root, legacy=False)
    base = store.datasets.folder(store.ref(*IDS))
    zygote.kill_writer_when("clear", lambda: any(base.glob(".ng.*.tmp")), 60)
    ModelStore(root=root, legacy=False).sweep()
    left_now = temps(root)
    report(
        "S7", holds=not (torn or visible or left_now), kills=TRIALS + 1, images_checked=images,
        torn_images=torn, visible_temp_files=visible, temp_folders_left_after_sweep=len(left_now),
        left_in=sorted({str(p.parent.relative_to(root)) for p in left_now}),
    )  # fmt: skip
    assert images > 0 and torn == 0 and visible == 0
    if left_now:
        raise ProductBug(f"{len(left_now)} temp folders survive store.sweep(): {left_now[:3]}")


def test_a_model_rewritten_twice_while_a_consumer_loads_it(trained, tmp_path, monkeypatch, report):
    """The interleaving the reader thread above hits now and then, made deterministic: the
    two writes happen right after the reader has loaded the index, before the calibration."""
    import engine.artifact

    root = tmp_path / "models"
    models = cycle_models(trained.engine)
    known = {(m.version, float(m.threshold)): i for i, m in enumerate(models)}
    reader, writer = ModelStore(root=root, legacy=False), ModelStore(root=root, legacy=False)
    writer.save_model(writer.ref(*IDS), models[0])
    real = engine.artifact.KnnIndex
    writes: list[str] = []

    class RacingIndex(real):  # type: ignore[misc, valid-type]
        @classmethod
        def read(cls, *args, **kwargs):
            index = real.read(*args, **kwargs)
            if not writes:  # a retraining and its recalibration land right now
                for model in models[2:]:
                    writes.append(writer.save_model(writer.ref(*IDS), model).revision)
            return index

    monkeypatch.setattr(engine.artifact, "KnnIndex", RacingIndex)
    try:
        outcome = str(known[load_checked(reader, known)])
    except TornModel as exc:
        outcome = str(exc)
    report("S7", holds=outcome.isdigit(), writes_during_load=len(writes), loaded=outcome)
    assert len(writes) == 2
    if not outcome.isdigit():
        raise ProductBug(outcome)
