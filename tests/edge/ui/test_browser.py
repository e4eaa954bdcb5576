"""The operator screen in a real browser (Debian's Chromium under Playwright) against a
running ``bdi up`` fed by the demo camera: log in, live verdicts, an NG part and its heatmap,
a review, an upload, a training with its progress bar, a rollback, the refusals (wrong
password, expired cookie, cross-site request, an operator's engineer action) and the audit
log naming who did each. The tests run in file order on one line; each takes a screenshot
for docs/ui/."""

from __future__ import annotations

import time

import pytest

from edge.simulator.discs import encode_png, make_ok
from tests.edge.ui.conftest import PASSWORDS, Line, shot

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.browser]
DEMO = {"recipe_id": "demo", "role_id": "camera-1", "roi_id": "friction-ring"}


def _until(what: str, check, timeout_s: float = 30) -> None:
    """Poll ``check()`` (the page's policy forbids eval, so no ``wait_for_function``)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.25)


def _number(page, testid: str) -> float:
    text = page.inner_text(f"[data-testid={testid}]").replace(",", "").strip()
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return 0.0  # "—": nothing yet


def _count(page, testid: str) -> int:
    return int(_number(page, testid))


def test_a_wrong_password_is_refused_in_words(line: Line, browser) -> None:
    page = browser.new_page()
    page.goto(f"{line.url}/ui")
    page.wait_for_url("**/ui/login**")
    page.fill("[data-testid=login-user]", "op")
    page.fill("[data-testid=login-password]", "not-the-password")
    page.click("[data-testid=login-submit]")
    error = page.locator("[data-testid=login-error]")
    error.filter(has_text="Wrong user name or password").wait_for()
    assert "/ui/login" in page.url
    shot(page, "login")
    page.context.close()


def test_an_expired_cookie_is_refused(line: Line, browser) -> None:
    """A session cookie past its time: the API answers 401 ``session_expired`` and the page
    sends the user to the login, saying why."""
    from configs.settings import Settings
    from edge.api.auth import COOKIE, Sessions
    from store.users import Users

    settings = Settings(models_dir=line.models_dir)
    sessions = Sessions(settings)
    sessions.ttl_ms = -1000  # issued already expired, signed with the server's own key
    token, _ = sessions.issue(Users(line.models_dir).load()["op"])
    context = browser.new_context()
    context.add_cookies([{"name": COOKIE, "value": token, "url": line.url}])
    page = context.new_page()
    page.goto(f"{line.url}/ui#/line")
    page.wait_for_url("**/ui/login**why=session_expired**")
    page.locator("[data-testid=login-error]").filter(has_text="expired").wait_for()
    r = context.request.get(f"{line.url}/auth/me")
    assert r.status == 401 and r.json()["error"] == "session_expired"
    context.close()


def test_live_verdicts_arrive_on_the_line_page(line: Line, browser) -> None:
    page = line.page(browser, "op", "#/line")
    rows = page.locator("[data-testid=line-rows] tr")
    rows.first.wait_for(timeout=30_000)
    _until("a verdict rate", lambda: _number(page, "line-rate") > 0)
    seen = _count(page, "line-count-OK") + _count(page, "line-count-NG")
    _until(
        "a new verdict",
        lambda: _count(page, "line-count-OK") + _count(page, "line-count-NG") > seen,
    )
    assert "live" in page.inner_text("[data-testid=line-feed-state]").lower()
    assert page.locator("[data-testid=line-roi-grid]").inner_text().count("friction-ring")
    shot(page, "line")
    page.context.close()


def _ng_with_region(line: Line) -> dict:
    """A stored NG verdict with at least one region and a kept crop (the demo makes them)."""
    with line.api("op") as api:
        deadline = time.monotonic() + 60
        while True:
            found = api.get("/verdicts", params={**DEMO, "verdict": "NG", "limit": 50})
            assert found.status_code == 200, found.text
            for v in found.json()["verdicts"]:
                if v.get("regions") and v.get("part_id") and api.get(
                    f"/frames/{v['frame_id']}/crop").status_code == 200:  # fmt: skip
                    return v
            assert time.monotonic() < deadline, "no NG with a region stored in 60 s"
            time.sleep(2)


def test_an_ng_part_shows_its_crop_heatmap_and_regions(line: Line, browser) -> None:
    ng = _ng_with_region(line)
    page = line.page(browser, "op", "#/parts")
    page.fill("[data-testid=parts-search]", ng["part_id"])
    page.click("[data-testid=parts-search-go]")
    page.locator("[data-testid=part-verdict]").filter(has_text="NG").wait_for()
    frame = page.locator(f"[data-testid=part-frame][data-frame-id='{ng['frame_id']}']")
    for img in ("frame-crop", "frame-heatmap"):
        image = frame.locator(f"[data-testid={img}]")
        image.wait_for()
        _until(f"{img} loaded", lambda i=image: i.evaluate("e => e.complete && e.naturalWidth > 0"))
    regions = frame.locator("[data-testid=frame-region]")
    assert regions.count() == len(ng["regions"])
    assert "mm²" in frame.inner_text()
    provenance = frame.locator("[data-testid=frame-provenance]").inner_text()
    assert ng["model_version"] in provenance
    shot(page, "parts")
    page.context.close()


def test_an_operator_overrules_a_verdict_from_the_keyboard(line: Line, browser) -> None:
    page = line.page(browser, "op", "#/review")
    item = page.locator("[data-testid=review-item][data-queued-as=NG]").first
    item.wait_for(timeout=30_000)
    item.click()
    frame_id = item.get_attribute("data-frame-id")
    page.locator("[data-testid=frame-crop]").first.wait_for()
    shot(page, "review")
    page.fill("[data-testid=review-note]", "casting mark, not a crack")
    page.locator("body").click(position={"x": 5, "y": 300})  # the keys belong to the page
    page.keyboard.press("o")
    with line.api("eng") as api:
        deadline = time.monotonic() + 20
        while not (reviews := api.get(f"/frames/{frame_id}/reviews").json()["reviews"]):
            assert time.monotonic() < deadline, "the overrule was not stored"
            time.sleep(0.5)
    assert reviews[-1]["decision"] == "overrule" and reviews[-1]["reviewer"] == "op"
    assert (
        page.locator(f"[data-testid=review-item][data-frame-id='{frame_id}']").count() == 0
        or "overrule" in page.inner_text("[data-testid=review-history]").lower()
    )
    page.context.close()


def _revisions(line: Line) -> dict:
    with line.api() as api:
        r = api.get("/models/revisions", params=DEMO)
    assert r.status_code == 200, r.text
    return r.json()


def test_engineer_actions_are_refused_to_an_operator_and_to_other_sites(
    line: Line, browser
) -> None:
    before = _revisions(line)
    older = before["revisions"][-1]["revision"]
    # the page offers an operator no engineer control
    page = line.page(browser, "op", "#/models")
    page.locator("[data-testid=model-row]").first.wait_for()
    assert page.locator("[data-testid=rollback]").count() == 0
    assert page.locator("[data-testid=train]").count() == 0
    # and the API refuses them to the operator's session, CSRF token and all
    with line.api("op") as op:
        r = op.post("/models/rollback", data={**DEMO, "revision": older})
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
        r = op.post("/datasets/upload", data={**DEMO, "label": "ok"},
                    files={"files": ("x.png", _png(1), "image/png")})  # fmt: skip
        assert r.status_code == 403, r.text
    # an engineer's session without its CSRF token, and a login from another site's page
    with line.api("eng") as eng:
        del eng.headers["X-CSRF-Token"]
        r = eng.post("/models/rollback", data={**DEMO, "revision": older})
        assert r.status_code == 403 and r.json()["error"] == "csrf", r.text
        r = eng.post("/auth/login", json={"username": "eng", "password": PASSWORDS["eng"]},
                     headers={"Origin": "http://evil.example"})  # fmt: skip
        assert r.status_code == 403 and r.json()["error"] == "csrf", r.text
    page.context.close()
    # a page of another site posting a form to the API in an engineer's browser
    eng_page = line.page(browser, "eng", "#/models")
    evil = (f"<form id=f method=post action='{line.url}/models/rollback'>"
            + "".join(f"<input name={k} value={v}>" for k, v in {**DEMO, "revision": older}.items())
            + "</form><script>document.getElementById('f').submit()</script>")  # fmt: skip
    eng_page.route("http://evil.example/", lambda route: route.fulfill(
        status=200, content_type="text/html", body=evil))  # fmt: skip
    with eng_page.expect_response(f"{line.url}/models/rollback") as answer:
        eng_page.goto("http://evil.example/")
    assert answer.value.status in (401, 403)
    assert _revisions(line)["current"] == before["current"]
    eng_page.context.close()


def _png(seed: int) -> bytes:
    return encode_png(make_ok(3_000_000 + seed, 96).image)


def test_an_engineer_uploads_trains_with_progress_and_rolls_back(
    line: Line, browser, tmp_path
) -> None:
    page = line.page(browser, "eng", "#/datasets")
    recipe = page.locator("[data-testid=datasets-recipe]")
    recipe.wait_for()
    if recipe.locator("option[value=demo]").count():  # a review stored a crop there already
        for testid, value in zip(("datasets-recipe", "datasets-role", "datasets-roi"),
                                 DEMO.values(), strict=True):  # fmt: skip
            page.locator(f"[data-testid={testid}]").select_option(value)
    else:
        page.click("[data-testid=datasets-new] summary")
        for testid, value in zip(("datasets-new-recipe", "datasets-new-role", "datasets-new-roi"),
                                 DEMO.values(), strict=True):  # fmt: skip
            page.fill(f"[data-testid={testid}]", value)
        page.click("[data-testid=datasets-new-open]")
    page.locator("[data-testid=dataset-count-ok]").wait_for()
    ok_before = _count(page, "dataset-count-ok")
    files = []
    for i in range(10):
        path = tmp_path / f"ok_{i}.png"
        path.write_bytes(_png(i))
        files.append(str(path))
    page.set_input_files("[data-testid=upload-input]", files)
    _until("10 uploads", lambda: _count(page, "dataset-count-ok") >= ok_before + 10, 60)
    assert page.locator("[data-testid=thumbs-ok] [data-testid=thumb]").count() >= 10
    shot(page, "datasets")

    page.goto(f"{line.url}/ui#/models")
    row = page.locator("[data-testid=model-row][data-roi='friction-ring']")
    row.wait_for()
    before = _revisions(line)
    row.locator("[data-testid=train]").click()
    progress = page.locator("[data-testid=train-progress]")
    progress.wait_for()
    page.locator("[data-testid=train-result]").wait_for(timeout=180_000)
    after = _revisions(line)
    assert after["current"] != before["current"]
    # roll back to the revision that was current before the training
    page.reload()
    revisions = page.locator("[data-testid=model-revisions]")
    revisions.first.wait_for()
    target = page.locator(f"[data-testid=revision-row][data-revision='{before['current']}']")
    target.locator("[data-testid=rollback]").click()
    page.locator("[data-testid=rollback-confirm]").click()
    deadline = time.monotonic() + 30
    while _revisions(line)["current"] != before["current"]:
        assert time.monotonic() < deadline, "the rollback did not happen"
        time.sleep(0.5)
    page.locator(f"[data-testid=revision-row][data-revision='{before['current']}']").filter(
        has_text="current").wait_for()  # fmt: skip
    page.locator("[data-testid=audit-row]").filter(has_text="rollback").first.wait_for()
    shot(page, "models", full_page=True)
    page.context.close()


def test_the_audit_log_names_who_did_each_action(line: Line) -> None:
    with line.api("eng") as api:
        r = api.get("/audit", params={"limit": 200})
    assert r.status_code == 200, r.text
    rows = r.json()["entries"]
    done = {(row["user"], row["action"], row["outcome"]) for row in rows}
    for who, what in (("op", "login"), ("op", "review"), ("eng", "datasets.upload"),
                      ("eng", "train_job"), ("eng", "rollback")):  # fmt: skip
        assert any(u == who and a == what and o < 300 for u, a, o in done), (who, what, done)
    refused = [
        row
        for row in rows
        if (row["user"], row["action"], row["outcome"]) == ("op", "rollback", 403)
    ]
    assert refused, "the operator's refused rollback is not in the audit log"


def test_no_page_raised_an_error(line: Line) -> None:
    assert line.errors == []
