"""Users, roles, sessions, CSRF and the audit log over a real HTTP server (edge/api/auth.py,
edge/api/routes/auth.py, edge/api/routes/audit.py; docs/AUTH.md)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from store.trace import Batch, TraceStore
from store.users import Users
from tests.helpers.api import IDS, LiveServer
from tests.helpers.settings import tiny_settings

PASSWORD = {"ana": "ana-password-1", "olo": "olo-password-2", "ex": "ex-password-33"}
KEY = "machine-key-for-the-auth-tests"
PLAN = {"rois": [{"role_id": "top", "roi_id": "r1"}], "deadline_ms": 5000}


@pytest.fixture
def users(tmp_path: Path) -> Users:
    """The users file of the ``live_server`` store: ana (engineer), olo (operator), ex
    (an engineer, disabled)."""
    users = Users(tmp_path / "models")
    users.add("ana", "engineer", PASSWORD["ana"])
    users.add("olo", "operator", PASSWORD["olo"])
    users.add("ex", "engineer", PASSWORD["ex"])
    users.set_disabled("ex", True)
    return users


def login(server: LiveServer, name: str, **headers: str) -> tuple[httpx.Client, dict[str, Any]]:
    """A client holding ``name``'s session cookie, and the login's answer."""
    http = httpx.Client(base_url=server.url, timeout=30)
    r = http.post("/auth/login", json={"username": name, "password": PASSWORD[name]},
                  headers=headers)  # fmt: skip
    assert r.status_code == 200, r.text
    return http, r.json()


def ok_verdict(frame_id: str) -> dict[str, Any]:
    return {
        "schema": "bdi.verdict/1", "frame_id": frame_id, "part_id": "SN-1",
        "recipe_id": "disc-a", "role_id": IDS["role_id"], "roi_id": IDS["roi_id"],
        "verdict": "OK", "score": 1.0, "threshold": 25.0, "regions": [],
        "model_version": "m1", "calibration_version": "c1", "image_sha256": "ab" * 32,
        "produced_at": datetime.now(UTC).isoformat(),
        "source": {"topic": "bdi.frames", "partition": 0, "offset": 1},
    }  # fmt: skip


def test_login_sets_a_strict_http_only_cookie_and_me_says_who(live_server, users):
    server = live_server()
    http, body = login(server, "ana")
    assert (body["user"], body["role"], body["via"]) == ("ana", "engineer", "session")
    assert body["csrf_token"] and body["expires_at"]
    cookie = http.post("/auth/logout", headers={"X-CSRF-Token": "x"})  # wrong token: refused
    assert cookie.status_code == 403 and cookie.json()["error"] == "csrf"
    raw = httpx.post(f"{server.url}/auth/login",
                     json={"username": "ana", "password": PASSWORD["ana"]})  # fmt: skip
    set_cookie = raw.headers["set-cookie"]
    flags = {part.strip().split("=")[0].lower() for part in set_cookie.split(";")}
    assert set_cookie.startswith("bdi_session=")
    assert {"httponly", "path", "max-age"} <= flags and "secure" not in flags  # plain http
    assert "samesite=strict" in set_cookie.lower().replace(" ", "")
    assert PASSWORD["ana"] not in raw.text and "argon2" not in raw.text
    behind_tls = httpx.post(f"{server.url}/auth/login", headers={"X-Forwarded-Proto": "https"},
                            json={"username": "ana", "password": PASSWORD["ana"]})  # fmt: skip
    assert "; secure" in behind_tls.headers["set-cookie"].lower()  # came over https
    me = http.get("/auth/me").json()
    assert (me["user"], me["role"], me["csrf_token"]) == ("ana", "engineer", body["csrf_token"])
    out = http.post("/auth/logout", headers={"X-CSRF-Token": body["csrf_token"]})
    assert out.status_code == 200 and "bdi_session" not in http.cookies
    assert http.get("/auth/me").status_code == 401


def test_wrong_password_unknown_and_disabled_users_get_the_same_401(live_server, users):
    server = live_server()
    attempts = {
        "wrong password": {"username": "ana", "password": "not-her-password"},
        "unknown user": {"username": "nobody", "password": "not-her-password"},
        "disabled user": {"username": "ex", "password": PASSWORD["ex"]},
    }
    times: dict[str, list[float]] = {k: [] for k in attempts}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for _ in range(3):
            for what, body in attempts.items():
                started = time.perf_counter()
                r = http.post("/auth/login", json=body)
                times[what].append(time.perf_counter() - started)
                assert r.status_code == 401, (what, r.text)
                assert r.json()["error"] == "bad_credentials"
                assert r.json()["detail"] == "wrong user name or password"
                assert "set-cookie" not in r.headers
    medians = [statistics.median(t) for t in times.values()]
    # an unknown user costs a hash verification too: no fast path tells names apart
    assert max(medians) < 4 * min(medians), times


def test_a_tampered_cookie_is_refused(live_server, users):
    server = live_server()
    http, _ = login(server, "ana")
    token = http.cookies["bdi_session"]
    body, sig = token.split(".")
    for forged in (body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + sig,
                   body + "." + sig[::-1], "garbage", body):  # fmt: skip
        r = httpx.get(f"{server.url}/auth/me", cookies={"bdi_session": forged})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", forged
    assert http.get("/auth/me").status_code == 200  # the real one still works


def test_an_expired_cookie_is_refused(live_server, users):
    server = live_server(session_ttl_s=1.0)
    http, _ = login(server, "ana")
    token = http.cookies["bdi_session"]
    time.sleep(1.2)  # the browser drops the cookie by now (Max-Age); a replayed one is refused
    r = httpx.get(f"{server.url}/manifest", cookies={"bdi_session": token})
    assert r.status_code == 401 and r.json()["error"] == "session_expired"


def test_a_session_changes_things_only_with_its_csrf_token(live_server, users):
    server = live_server(api_key=KEY)
    http, body = login(server, "ana")
    put = "/recipes/r/plan"
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": body["csrf_token"][:-1]}):
        r = http.put(put, json=PLAN, headers=headers)
        assert r.status_code == 403 and r.json()["error"] == "csrf", r.text
    assert http.get(put).status_code == 404  # nothing was stored; reading needs no token
    assert http.put(put, json=PLAN, headers={"X-CSRF-Token": body["csrf_token"]}).status_code == 200
    other, _ = login(server, "olo")  # another session's token is no good either
    r = other.post("/frames/f1/review", json={"decision": "confirm"},
                   headers={"X-CSRF-Token": body["csrf_token"]})  # fmt: skip
    assert r.status_code == 403 and r.json()["error"] == "csrf"
    # a machine with the key needs no CSRF token (no cookie a browser could send for it)
    machine = httpx.put(f"{server.url}{put}", json=PLAN, headers={"X-API-Key": KEY})
    assert machine.status_code == 200, machine.text
    assert httpx.get(f"{server.url}/manifest").status_code == 401  # nobody


def test_a_cross_site_login_is_refused(live_server, users):
    server = live_server(cors_origins="https://hmi.plant.example")
    creds = {"username": "ana", "password": PASSWORD["ana"]}
    for origin in ("https://evil.example", "null", "http://127.0.0.1:1"):
        r = httpx.post(f"{server.url}/auth/login", json=creds, headers={"Origin": origin})
        assert r.status_code == 403 and r.json()["error"] == "csrf", origin
        assert "set-cookie" not in r.headers
    for origin in (server.url, "https://hmi.plant.example"):
        r = httpx.post(f"{server.url}/auth/login", json=creds, headers={"Origin": origin})
        assert r.status_code == 200, (origin, r.text)


def test_an_operator_reads_and_reviews_but_is_refused_an_engineers_action(
    live_server, users, tmp_path
):
    server = live_server()
    TraceStore.open(tiny_settings(models_dir=tmp_path / "models")).ingest(
        Batch(int(time.time() * 1000), [], [ok_verdict("f1")], [])
    )
    http, body = login(server, "olo")
    csrf = {"X-CSRF-Token": body["csrf_token"]}
    for method, path, kwargs in [
        ("POST", "/models/rollback", {"data": {**IDS, "revision": "v1"}}),
        ("PUT", "/recipes/r/plan", {"json": PLAN}),
        ("DELETE", "/datasets/clear", {"params": IDS}),
        ("POST", "/datasets/upload", {"data": {**IDS, "label": "ok"}}),
        ("POST", "/fit_ok", {"data": {**IDS, "use_dataset": "true"}}),
        ("POST", "/calibrate_dataset", {"data": IDS}),
        ("POST", "/infer", {"data": IDS}),
        ("GET", "/audit", {}),
        # reviewing is the operator's; adding the crop to the memory bank changes the model
        ("POST", "/frames/f1/review", {"json": {"decision": "overrule", "append": True}}),
    ]:
        r = http.request(method, path, headers=csrf, **kwargs)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"] == "forbidden" and "engineer" in r.json()["detail"]
    for path in ("/manifest", "/recipes/r/plan", "/verdicts", "/frames/f1"):
        assert http.get(path).status_code in (200, 404), path
    r = http.post("/frames/f1/review", headers=csrf,
                  json={"decision": "confirm", "reviewer": "someone-else"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["reviewer"] == "olo"  # the logged-in user, whatever the body says
    assert http.get("/frames/f1/reviews").json()["reviews"][0]["reviewer"] == "olo"


def test_the_api_key_maps_to_its_role(live_server, users):
    server = live_server(api_key=KEY, api_key_role="operator")
    headers = {"X-API-Key": KEY}
    r = httpx.put(f"{server.url}/recipes/r/plan", json=PLAN, headers=headers)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    me = httpx.get(f"{server.url}/auth/me", headers=headers).json()
    assert (me["user"], me["role"], me["via"], me["csrf_token"]) == (
        "api-key",
        "operator",
        "api_key",
        None,
    )
    # without the body's reviewer an API-key review is refused as before (422)
    r = httpx.post(f"{server.url}/frames/f1/review", json={"decision": "confirm"},
                   headers=headers)  # fmt: skip
    assert r.status_code == 422 and r.json()["error"] == "validation_error"


def test_users_close_the_open_api_and_a_disabled_user_loses_its_session(live_server, tmp_path):
    server = live_server()
    me = httpx.get(f"{server.url}/auth/me").json()
    assert (me["user"], me["role"], me["via"]) == ("anonymous", "engineer", "open")
    assert httpx.put(f"{server.url}/recipes/r/plan", json=PLAN).status_code == 200
    users = Users(tmp_path / "models")
    users.add("ana", "engineer", PASSWORD["ana"])
    r = httpx.get(f"{server.url}/manifest")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    http, _ = login(server, "ana")
    assert http.get("/manifest").status_code == 200
    users.set_role("ana", "operator")  # takes effect at once
    assert http.get("/auth/me").json()["role"] == "operator"
    users.set_disabled("ana", True)
    assert http.get("/manifest").status_code == 401
    users.set_disabled("ana", False)
    assert http.get("/manifest").status_code == 200
    users.set_password("ana", "a-new-password")  # the old password's sessions end
    r = http.get("/manifest")
    assert r.status_code == 401 and "password changed" in r.json()["detail"]


def test_the_audit_log_shows_who_did_what(live_server, users, tmp_path):
    server = live_server(api_key=KEY)
    TraceStore.open(tiny_settings(models_dir=tmp_path / "models")).ingest(
        Batch(int(time.time() * 1000), [], [ok_verdict("f1")], [])
    )
    ana, a = login(server, "ana")
    olo, o = login(server, "olo")
    ana.put("/recipes/r/plan", json=PLAN, headers={"X-CSRF-Token": a["csrf_token"]})
    olo.post("/frames/f1/review", json={"decision": "confirm"},
             headers={"X-CSRF-Token": o["csrf_token"]})  # fmt: skip
    olo.delete("/datasets/clear", params=IDS, headers={"X-CSRF-Token": o["csrf_token"]})
    httpx.post(f"{server.url}/auth/login", json={"username": "ana", "password": "nope-nope"})
    httpx.post(f"{server.url}/models/rollback", data={**IDS, "revision": "v9"},
               headers={"X-API-Key": KEY})  # fmt: skip
    ana.get("/manifest")  # a read: not audited
    entries = ana.get("/audit").json()["entries"]
    got = [(e["user"], e["role"], e["action"], e["target"], e["outcome"]) for e in entries]
    assert got == [
        ("api-key", "engineer", "rollback", f"disc-a/{IDS['role_id']}/{IDS['roi_id']}", 404),
        ("ana", None, "login_failed", "ana", 401),
        ("olo", "operator", "datasets.clear", None, 403),
        ("olo", "operator", "review", "f1", 200),
        ("ana", "engineer", "plan.put", "r", 200),
        ("olo", "operator", "login", "olo", 200),
        ("ana", "engineer", "login", "ana", 200),
    ], got
    assert all(e["request_id"] and e["at"] for e in entries)
    assert entries[3]["detail"] == {
        "method": "POST", "route": "/frames/{frame_id:path}/review", "via": "session",
        "decision": "confirm", "append": False,
    }  # fmt: skip
    mine = ana.get("/audit", params={"user": "olo", "action": "review"}).json()["entries"]
    assert [e["action"] for e in mine] == ["review"]
    assert len(ana.get("/audit", params={"limit": 2}).json()["entries"]) == 2
    assert PASSWORD["ana"] not in ana.get("/audit").text


def test_the_audit_never_fails_a_request_without_a_trace_database(
    make_client: Callable[..., Any],
):
    client = make_client()  # no trace database: `bdi trace` never ran
    assert client.put("/recipes/r/plan", json=PLAN).status_code == 200
    assert client.get("/audit").status_code == 503
    state = client.app.state.bdi
    logs = state.diagnostics.path.read_text()
    assert '"event":"audit"' in logs and '"audit_not_stored"' in logs
