"""S9: two API workers (two apps, each with its own engine and store, on one store folder,
over real HTTP) train, calibrate, upload and delete on the same recipe at once.

Must hold: writes are serialised by the recipe lock (audited: no two holders of one lock
file ever overlap), the first training of a recipe locks its ``mm_per_px`` exactly once
(two concurrent first trainings with different scales: one 200, one 409), no 5xx, and the
store ends consistent (the served model is one that a response named, complete; the dataset
listing matches the files and every image its sidecar).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from engine.patchcore import content_version
from store import ModelStore, atomic
from store.locks import FileLocks
from tests.helpers.api import files
from tests.helpers.images import ng_png, ok_png

pytestmark = pytest.mark.slow

ROUNDS = 10
IDS = {"recipe_id": "shared", "role_id": "Master1", "roi_id": "inspection-1"}


@pytest.fixture
def lock_audit(monkeypatch):
    """Every recipe-lock holding: ``(lock file, holder, start, end)``, holder = store+thread."""
    held: list[tuple[str, tuple[int, int], float, float, float]] = []
    real = FileLocks.hold

    @contextmanager
    def audited(self, path):
        asked = time.monotonic()
        with real(self, path):
            start = time.monotonic()
            try:
                yield
            finally:
                holder = (id(self), threading.get_ident())
                held.append((str(path), holder, start, time.monotonic(), start - asked))

    monkeypatch.setattr(FileLocks, "hold", audited)
    return held


def overlaps(held) -> list[tuple]:
    out = []
    by_path: dict[str, list] = {}
    for path, holder, start, end, _ in held:
        by_path.setdefault(path, []).append((start, end, holder))
    for spans in by_path.values():
        spans.sort()
        for (_, e1, h1), (s2, _, h2) in zip(spans, spans[1:], strict=False):
            if h1 != h2 and s2 < e1:
                out.append((h1, h2, round(e1 - s2, 4)))
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_together(*jobs) -> list:
    barrier = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)

    def run(i, job):
        barrier.wait()
        results[i] = job()

    threads = [threading.Thread(target=run, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def upload(http: httpx.Client, label: str, blobs: list[bytes]) -> httpx.Response:
    return http.post("/datasets/upload", data={**IDS, "label": label}, files=files("images", blobs))


def worker_a(http: httpx.Client, log: list) -> None:
    for r in range(ROUNDS):
        if r % 2:
            resp = http.post("/fit_ok", data={**IDS, "use_dataset": "true"})
        else:
            blobs = [ok_png(300 + 4 * r + i) for i in range(4)]
            resp = http.post(
                "/fit_ok", data={**IDS, "mm_per_px": "0.1"}, files=files("images", blobs)
            )
        log.append(("A fit", resp))
        body = {**IDS, "ok_scores": [1.0, 2.0 + r], "ng_scores": [50.0 + r]}
        log.append(("A calibrate_ng", http.post("/calibrate_ng", json=body)))


def worker_b(http: httpx.Client, log: list) -> None:
    for r in range(ROUNDS):
        log.append(("B upload", upload(http, "ok", [ok_png(400 + 2 * r + i) for i in range(2)])))
        listed = http.get("/datasets/list", params={**IDS, "label": "ok"}).json()["ok"]
        if listed:
            name = listed[0]["name"]
            params = {**IDS, "label": "ok", "name": name}
            log.append(("B delete", http.delete("/datasets/file", params=params)))
        log.append(("B clear ng", http.delete("/datasets/clear", params={**IDS, "label": "ng"})))
        log.append(("B upload ng", upload(http, "ng", [ng_png(500 + r)])))
        log.append(("B calibrate_dataset", http.post("/calibrate_dataset", data=IDS)))
        log.append(("B fit dataset", http.post("/fit_ok", data={**IDS, "use_dataset": "true"})))


ALLOWED = {  # refusals that a concurrent change legitimately causes
    "A fit": {200, 400},  # missing_ok_samples while B deletes
    "B fit dataset": {200, 400},
    "B delete": {200, 404},  # the listed image was deleted meanwhile
    "B calibrate_dataset": {200, 400},
}


def test_two_workers_write_one_recipe_concurrently(live_server, lock_audit, tmp_path, report):
    a, b = live_server(), live_server()
    root = tmp_path / "models"
    with (
        httpx.Client(base_url=a.url, timeout=120) as ha,
        httpx.Client(base_url=b.url, timeout=120) as hb,
    ):
        # 1. two first trainings of fresh recipes with different scales, at once
        races = []
        for i in range(4):
            ids = {**IDS, "recipe_id": f"race-{i}"}
            imgs = [ok_png(700 + 4 * i + j) for j in range(4)]
            ra, rb = run_together(
                lambda ids=ids, imgs=imgs: ha.post("/fit_ok", data={**ids, "mm_per_px": "0.1"},
                                                   files=files("images", imgs)),
                lambda ids=ids, imgs=imgs: hb.post("/fit_ok", data={**ids, "mm_per_px": "0.2"},
                                                   files=files("images", imgs)),
            )  # fmt: skip
            winner = 0.1 if ra.status_code == 200 else 0.2
            locked = ModelStore(root=root).recipe_mm_per_px(ids["recipe_id"])
            races.append(((ra.status_code, rb.status_code), locked == winner))
        # 2. fits, calibrations, uploads, deletes, clears on one recipe from both workers
        seed = ha.post("/datasets/upload", data={**IDS, "label": "ok", "mm_per_px": "0.1"},
                       files=files("images", [ok_png(100 + i) for i in range(12)]))  # fmt: skip
        assert seed.status_code == 200, seed.text
        assert ha.post("/fit_ok", data={**IDS, "use_dataset": "true"}).status_code == 200
        log: list[tuple[str, httpx.Response]] = []
        run_together(lambda: worker_a(ha, log), lambda: worker_b(hb, log))
        listing_a = ha.get("/datasets/list", params={**IDS, "with_meta": "true"}).json()
        listing_b = hb.get("/datasets/list", params={**IDS, "with_meta": "true"}).json()
    statuses = Counter(f"{op} {r.status_code}" for op, r in log)
    server_errors = [(op, r.status_code, r.text[:200]) for op, r in log if r.status_code >= 500]
    refused = [(op, r.status_code, r.json().get("error")) for op, r in log
               if r.status_code not in ALLOWED.get(op, {200})]  # fmt: skip
    pairs = {(r.json()["model_version"], r.json()["threshold"]) for op, r in log
             if r.status_code == 200 and ("fit" in op or "calibrate" in op)}  # fmt: skip
    store = ModelStore(root=root)
    model = store.load_model(store.ref(IDS["recipe_id"], IDS["role_id"], IDS["roi_id"]))
    complete = content_version(model.meta, model.index.bank(), model.baseline) == model.version
    final_named = (model.version, model.threshold) in pairs
    folder = store.datasets.folder(store.ref(IDS["recipe_id"], IDS["role_id"], IDS["roi_id"]))
    on_disk = {lab: sorted(p.name for p in (folder / lab).glob("*.png")) for lab in ("ok", "ng")}
    listed = {lab: [i["name"] for i in listing_a[lab]] for lab in ("ok", "ng")}
    sidecars_ok = all(
        i["meta"].get("sha256") == sha256(folder / lab / i["name"])
        for lab in ("ok", "ng")
        for i in listing_a[lab]
    )
    overlap = overlaps(lock_audit)
    races_ok = all(sorted(s) == [200, 409] and locked for s, locked in races)
    report(
        "S9", holds=not (server_errors or refused or overlap) and races_ok and complete
        and final_named and listed == on_disk and listing_a == listing_b and sidecars_ok,
        workers=2, requests=len(log), statuses=dict(sorted(statuses.items())),
        server_errors=len(server_errors), unexpected_refusals=len(refused),
        mm_races=[s for s, _ in races], lock_holdings=len(lock_audit),
        waited_for_the_lock=sum(1 for *_, wait in lock_audit if wait > 0.001),
        overlapping_holdings=len(overlap), final_model_complete=complete,
        final_model_named_by_a_response=final_named, dataset_listing_matches_disk=listed == on_disk,
    )  # fmt: skip
    assert not server_errors, server_errors
    assert not refused, refused
    assert races_ok, races
    assert not overlap, overlap[:5]
    assert complete and final_named
    assert listed == on_disk and listing_a == listing_b and sidecars_ok
    assert not [p for p in root.rglob("*") if atomic.is_temp(p.name)]
