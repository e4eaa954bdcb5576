"""Training jobs over a real HTTP server: ``POST /jobs/train``, ``GET /jobs/{job_id}``,
``GET /jobs`` (edge/api/routes/jobs.py) and the registry behind them (edge/api/jobs.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.api.diagnostics import Diagnostics
from edge.api.errors import BadRequest, NotFound
from edge.api.jobs import Jobs
from edge.api.schemas import FitResult
from store.users import Users
from tests.helpers.api import IDS, LiveServer, files
from tests.helpers.images import ok_png
from tests.helpers.settings import tiny_settings

pytestmark = pytest.mark.slow  # each job trains a (tiny) model

TARGET = "disc-a/Master1/inspection-1"  # IDS as the store names them
PASSWORD = {"ana": "ana-password-1", "olo": "olo-password-2"}


def upload_ok(http: httpx.Client, n: int, first: int = 0) -> None:
    blobs = [ok_png(s) for s in range(first, first + n)]
    r = http.post("/datasets/upload", data={**IDS, "label": "ok"}, files=files("images", blobs))
    assert r.status_code == 200, r.text


def wait_finished(http: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = http.get(f"/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s")


class SaveGate:
    """Holds the store's ``save_model`` until :meth:`open`: the job is then running, in its
    last stage, for as long as the test looks at it."""

    def __init__(self, server: LiveServer) -> None:
        store = server.app.state.bdi.store
        self.reached, self._open = threading.Event(), threading.Event()
        save = store.save_model

        def gated(*args: Any, **kwargs: Any) -> Any:
            self.reached.set()
            assert self._open.wait(60), "the test never opened the gate"
            return save(*args, **kwargs)

        store.save_model = gated

    def open(self) -> None:
        self._open.set()


def test_a_job_trains_from_the_dataset_with_progress(live_server):
    server = live_server(min_ok_samples=6)
    http = httpx.Client(base_url=server.url, timeout=60)
    upload_ok(http, 8)
    gate = SaveGate(server)
    r = http.post("/jobs/train", data={**IDS, "mm_per_px": "0.1"})
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["state"] in ("queued", "running") and accepted["result"] is None
    assert (accepted["recipe_id"], accepted["mode"], accepted["user"]) == (
        "disc-a", "fit", "anonymous",
    )  # fmt: skip
    job_id = accepted["job_id"]
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while not gate.reached.is_set():  # poll while the engine embeds and builds the bank
        seen.append(http.get(f"/jobs/{job_id}").json())
        assert seen[-1]["state"] in ("queued", "running"), seen[-1]
        assert time.monotonic() < deadline, "the job never reached its save"
        time.sleep(0.01)
    running = http.get(f"/jobs/{job_id}").json()  # held before the save
    gate.open()
    done = wait_finished(http, job_id)
    seen += [running, done]
    fractions = [j["progress"]["fraction"] for j in seen]
    assert fractions == sorted(fractions), "the progress went back"
    assert running["state"] == "running" and running["progress"]["stage"] == "save"
    assert 0 < running["progress"]["fraction"] < 1
    assert {"embed", "save"} <= {j["progress"]["stage"] for j in seen}
    assert done["state"] == "done" and done["error"] is None, done
    assert done["progress"] == {"stage": "done", "done": 1, "total": 1, "fraction": 1.0}
    assert done["started_at"] <= done["finished_at"]
    result = done["result"]
    assert result["n_images"] == 8 and result["source"] == "dataset" and result["mode"] == "fit"
    assert http.get("/state", params=IDS).json()["version"] == result["model_version"]
    fit_ok = http.post("/fit_ok", data={**IDS, "use_dataset": "true"})  # the same, at once
    assert fit_ok.status_code == 200, fit_ok.text
    assert set(result) == set(fit_ok.json()) == set(FitResult.model_fields)
    assert {k: fit_ok.json()[k] for k in ("n_images", "source", "mode", "grid")} == {
        k: result[k] for k in ("n_images", "source", "mode", "grid")
    }
    listed = http.get("/jobs").json()["jobs"]
    assert [j["job_id"] for j in listed] == [job_id] and listed[0]["state"] == "done"


def test_an_append_job_takes_json_and_adds_to_the_stored_model(live_server):
    server = live_server(min_ok_samples=4)
    http = httpx.Client(base_url=server.url, timeout=60)
    upload_ok(http, 4)
    first = wait_finished(http, http.post("/jobs/train", data=IDS).json()["job_id"])
    assert first["state"] == "done", first
    upload_ok(http, 2, first=20)
    r = http.post("/jobs/train", json={**IDS, "mode": "append", "target_frr": 0.1})
    assert r.status_code == 400 and r.json()["error"] == "target_frr_with_append"
    r = http.post("/jobs/train", json={**IDS, "mode": "append"})
    assert r.status_code == 202, r.text
    job = wait_finished(http, r.json()["job_id"])
    assert job["state"] == "done" and job["mode"] == "append", job
    result = job["result"]
    assert result["mode"] == "append" and result["n_images"] == 6
    assert result["previous_model_version"] == first["result"]["model_version"]
    assert result["added_rows"] > 0


def test_a_missing_dataset_is_refused_at_once_as_fit_ok_refuses_it(live_server):
    server = live_server()
    http = httpx.Client(base_url=server.url, timeout=60)
    upload_ok(http, 3)
    fit_ok = http.post("/fit_ok", data={**IDS, "use_dataset": "true"})
    job = http.post("/jobs/train", data=IDS)
    assert fit_ok.status_code == job.status_code == 400
    assert fit_ok.json()["error"] == job.json()["error"] == "missing_ok_samples"
    assert fit_ok.json()["detail"] == job.json()["detail"]
    other = http.post("/jobs/train", json={**IDS, "roi_id": "no-images-here"})
    assert other.status_code == 400 and other.json()["error"] == "missing_ok_samples"
    assert http.get("/jobs").json() == {"jobs": []}  # nothing was queued


def test_what_only_the_training_finds_fails_the_job_with_fit_oks_error(live_server):
    server = live_server()
    http = httpx.Client(base_url=server.url, timeout=60)
    upload_ok(http, 1)
    # an append with no stored model: /fit_ok answers 400 missing_memory
    r = http.post("/jobs/train", data={**IDS, "mode": "append"})
    assert r.status_code == 202, r.text
    job = wait_finished(http, r.json()["job_id"])
    assert job["state"] == "failed" and job["result"] is None
    assert job["error"]["code"] == "missing_memory" and job["error"]["status"] == 400
    assert job["error"]["message"] and job["finished_at"]
    fit_ok = http.post("/fit_ok", data={**IDS, "mode": "append", "use_dataset": "true"})
    assert (fit_ok.status_code, fit_ok.json()["error"]) == (400, "missing_memory")
    # the training slot was given back
    again = http.post("/jobs/train", data={**IDS, "mode": "append"})
    assert again.status_code == 202, again.text
    wait_finished(http, again.json()["job_id"])


def test_a_busy_trainer_answers_429_and_bad_requests_are_4xx(live_server):
    server = live_server(min_ok_samples=1)
    http = httpx.Client(base_url=server.url, timeout=60)
    upload_ok(http, 1)
    slots = server.app.state.bdi.fit_slots
    assert slots.acquire(blocking=False)
    try:
        r = http.post("/jobs/train", data=IDS)
    finally:
        slots.release()
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert r.json()["error"] == "busy"
    r = http.get("/jobs/0123456789abcdef")
    assert r.status_code == 404 and r.json()["error"] == "job_not_found"
    bad = [
        ({"content": b"role_id=x", "headers": {"content-type": "text/plain"}}, 415),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
        ({"json": ["not", "an", "object"]}, 422),
        ({"json": {"role_id": IDS["role_id"]}}, 422),  # no roi_id
        ({"json": {**IDS, "use_dataset": True}}, 422),  # not a field of a job
        ({"data": {**IDS, "target_frr": "1.5"}}, 422),
        ({"data": {**IDS, "mm_per_px": "nan"}}, 422),
        ({"data": {**IDS, "mode": "refit"}}, 422),
        ({"data": {**IDS, "recipe_id": "../etc"}}, 400),
    ]
    for kwargs, status in bad:
        r = http.post("/jobs/train", **kwargs)
        assert r.status_code == status, (kwargs, r.text)
        assert set(r.json()) >= {"error", "detail", "request_id"}
    assert http.get("/jobs").json() == {"jobs": []}


# --- roles and the audit log -------------------------------------------------------------
def login(server: LiveServer, name: str) -> tuple[httpx.Client, str]:
    """A client with ``name``'s session cookie, and its CSRF token."""
    http = httpx.Client(base_url=server.url, timeout=60)
    r = http.post("/auth/login", json={"username": name, "password": PASSWORD[name]})
    assert r.status_code == 200, r.text
    return http, r.json()["csrf_token"]


def test_engineers_start_jobs_operators_watch_and_the_audit_says_who(live_server, tmp_path):
    users = Users(tmp_path / "models")  # the live server's store
    users.add("ana", "engineer", PASSWORD["ana"])
    users.add("olo", "operator", PASSWORD["olo"])
    server = live_server(min_ok_samples=4)
    ana, ana_csrf = login(server, "ana")
    olo, olo_csrf = login(server, "olo")
    ok = [ok_png(s) for s in range(4)]
    up = ana.post("/datasets/upload", data={**IDS, "label": "ok"}, files=files("images", ok),
                  headers={"X-CSRF-Token": ana_csrf})  # fmt: skip
    assert up.status_code == 200, up.text
    refused = olo.post("/jobs/train", data=IDS, headers={"X-CSRF-Token": olo_csrf})
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    no_csrf = ana.post("/jobs/train", data=IDS)
    assert no_csrf.status_code == 403 and no_csrf.json()["error"] == "csrf"
    assert httpx.get(f"{server.url}/jobs").status_code == 401  # nobody
    r = ana.post("/jobs/train", data=IDS, headers={"X-CSRF-Token": ana_csrf})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    job = wait_finished(olo, job_id)  # operators watch
    assert job["state"] == "done" and job["user"] == "ana", job
    assert [j["job_id"] for j in olo.get("/jobs").json()["jobs"]] == [job_id]
    entries = ana.get("/audit", params={"action": "train_job"}).json()["entries"]
    outcomes = sorted((e["user"] or "", e["outcome"]) for e in entries)
    assert outcomes == [("", 403), ("ana", 202), ("olo", 403)], entries  # "": CSRF refused
    (started,) = (e for e in entries if e["outcome"] == 202)
    assert (started["target"], started["role"]) == (TARGET, "engineer")
    assert started["detail"]["job_id"] == job_id and started["detail"]["mode"] == "fit"
    (operator,) = (e for e in entries if e["user"] == "olo")
    assert operator["role"] == "operator"


# --- the registry --------------------------------------------------------------------------
def test_the_registry_keeps_the_running_and_the_last_finished_jobs(tmp_path: Path):
    from store import ModelStore

    settings = tiny_settings(models_dir=tmp_path / "models")
    ref = ModelStore(settings).ref(IDS["recipe_id"], IDS["role_id"], IDS["roi_id"])
    diagnostics = Diagnostics(settings)
    jobs = Jobs(diagnostics, keep_finished=3)
    hold, released = threading.Event(), threading.Semaphore(0)

    def held(progress: Any) -> Any:
        progress("embed", 1, 4)
        assert hold.wait(30)
        raise BadRequest("no", code="test_refusal")

    def fails(progress: Any) -> Any:
        raise RuntimeError("/srv/secret/path exploded")

    running = jobs.start(ref, "fit", "ana", "r0", held, released.release)["job_id"]
    finished = [jobs.start(ref, "fit", "ana", f"r{i}", fails, released.release)["job_id"]
                for i in range(5)]  # fmt: skip
    for _ in finished:
        assert released.acquire(timeout=30)
    ids = [j["job_id"] for j in jobs.recent(100)]
    assert ids == [*reversed(finished[2:]), running]  # newest first; two forgotten
    with pytest.raises(NotFound):
        jobs.get(finished[0])
    err = jobs.get(finished[-1])["error"]
    assert err["code"] == "internal_error" and "secret" not in err["message"]
    now = jobs.get(running)
    assert now["state"] == "running" and now["progress"]["stage"] == "embed"
    assert 0.05 < now["progress"]["fraction"] < 0.6
    hold.set()
    assert released.acquire(timeout=30)
    assert jobs.get(running)["error"] == {"code": "test_refusal", "message": "no", "status": 400}
    assert len(jobs.recent(100)) == 3
    diagnostics.close()
