"""/datasets/*: upload, list, download (one file, zip), delete, clear."""

from __future__ import annotations

import io
import zipfile

from tests.helpers.api import IDS, files
from tests.helpers.images import ok_jpeg, ok_png

Q = IDS


def upload(client, label: str, blobs: list[bytes], ext: str = "png", **form: str):
    return client.post(
        "/datasets/upload", data={**IDS, "label": label, **form}, files=files("images", blobs, ext)
    )


def test_round_trip(client):
    r = upload(client, "ok", [ok_png(0), ok_png(1)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recipe_id"] == "disc-a" and body["counts"] == {"ok": 2, "ng": 0}
    names = [item["name"] for item in body["stored"]]
    assert all(n.endswith(".png") and not n.startswith("img") for n in names)  # server-side
    assert body["stored"][0]["meta"]["source"] == "img0.png"  # the client's name: metadata
    upload(client, "ng", [ok_jpeg(2)], ext="jpg")

    listing = client.get("/datasets/list", params=Q).json()
    assert [i["name"] for i in listing["ok"]] == names
    assert len(listing["ng"]) == 1 and listing["counts"] == {"ok": 2, "ng": 1}

    one = client.get("/datasets/file", params={**Q, "label": "ok", "name": names[0]})
    assert one.status_code == 200 and one.headers["content-type"] == "image/png"
    assert one.content.startswith(b"\x89PNG")

    z = client.get("/datasets/download", params=Q)
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        members = set(zf.namelist())
    assert {f"ok/{n}" for n in names} <= members
    assert sum(m.startswith("ng/") and m.endswith(".png") for m in members) == 1
    only_ok = client.get("/datasets/download", params={**Q, "label": "ok"})
    with zipfile.ZipFile(io.BytesIO(only_ok.content)) as zf:
        assert all(m.startswith("ok/") for m in zf.namelist())

    d = client.delete("/datasets/file", params={**Q, "label": "ok", "name": names[0]})
    assert d.status_code == 200 and d.json() == {"deleted": 1, "counts": {"ok": 1, "ng": 1}}
    again = client.delete("/datasets/file", params={**Q, "label": "ok", "name": names[0]})
    assert again.status_code == 404 and again.json()["error"] == "not_found"

    c = client.delete("/datasets/clear", params={**Q, "label": "ng"})
    assert c.json() == {"deleted": 1, "counts": {"ok": 1, "ng": 0}}
    c = client.delete("/datasets/clear", params=Q)
    assert c.json() == {"deleted": 1, "counts": {"ok": 0, "ng": 0}}


def test_names_never_become_paths(client):
    upload(client, "ok", [ok_png(0)])
    for name in ("../../recipe.json", "/etc/passwd", "..", "a/b.png", "x.png\x00.txt"):
        r = client.get("/datasets/file", params={**Q, "label": "ok", "name": name})
        assert r.status_code in (400, 404), (name, r.status_code)
        assert r.json()["error"] in ("invalid_id", "invalid_value", "not_found")


def test_upload_refuses_bad_input(client):
    assert upload(client, "maybe", [ok_png(0)]).status_code == 422
    r = upload(client, "ok", [b"not an image"])
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    r = client.post("/datasets/upload", data={**IDS, "label": "ok"})
    assert r.status_code == 422  # the file field is required
    # nothing half-stored
    assert client.get("/datasets/list", params=Q).json()["counts"] == {"ok": 0, "ng": 0}


def test_upload_respects_the_recipe_scale(client):
    assert upload(client, "ok", [ok_png(0)], mm_per_px="0.1").status_code == 200
    fit = client.post("/fit_ok", data={**IDS, "mm_per_px": "0.1"},
                      files=files("images", [ok_png(1)]))  # fmt: skip
    assert fit.status_code == 200
    r = upload(client, "ok", [ok_png(2)], mm_per_px="0.3")
    assert r.status_code == 409 and r.json()["error"] == "mm_per_px_mismatch"


def test_list_of_unknown_roi_is_empty(client):
    r = client.get("/datasets/list", params={**Q, "roi_id": "never-used"})
    assert r.status_code == 200 and r.json()["counts"] == {"ok": 0, "ng": 0}


def test_list_says_how_many_ok_images_training_needs(make_client):
    client = make_client(min_ok_samples=7)
    listing = client.get("/datasets/list", params=Q).json()
    assert listing["min_ok_samples"] == 7 and listing["counts"] == {"ok": 0, "ng": 0}
