"""S11: path traversal through every id and file-name field of every operation (taken from
the OpenAPI schema), over real HTTP: ``..``, encoded dots, absolute paths, NUL, backslashes,
look-alike dots, a recipe id that names a symlink planted inside the store, and the upload
file name. A canary folder next to the store root holds a PNG and a secret token.

Must hold: no 5xx; recipe ids, labels and image names that are not valid are refused
(4xx); role / ROI ids and model keys may be accepted (they only reach the disk base64-
encoded or sanitised); nothing outside the store root is read (no answer carries the
canary's bytes or token), written or deleted (the tree outside the root, hashed before and
after, is unchanged).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections import Counter
from pathlib import Path

import httpx
import pytest

from edge.simulator.discs import encode_png, make_ng
from store import ModelStore
from tests.helpers.api import files
from tests.helpers.api_requests import PATH_LIKE, VALID, operations, send
from tests.helpers.images import ok_png
from tests.helpers.probes import ProductBug

pytestmark = pytest.mark.slow


def payloads(outside: Path) -> list[str]:
    absolute = str(outside / "canary.png")
    return [
        "..", "../..", "../../outside", "../../../outside/canary.png", ".", "/",
        "%2e%2e", "%2e%2e%2f%2e%2e%2foutside", "..%2f..%2foutside", "%252e%252e",
        absolute, "/etc/passwd", "a\x00b", "\x00", "..\\..\\outside", "....//....//outside",
        "\uff0e\uff0e", "\u2025", "~", "${HOME}", "evil-link", "canary.png",
        "link.png", "../canary.png\x00.png", "ok/../../..",
    ]  # fmt: skip


def snapshot(base: Path, skip: Path) -> dict[str, str]:
    """``{relative path: sha256 or 'dir' or 'link->target'}`` of everything outside ``skip``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        if here == skip or skip in here.parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = here / name
            rel = str(p.relative_to(base))
            if p == skip:
                continue
            if p.is_symlink():
                out[rel] = f"link->{os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def plant(tmp_path: Path) -> tuple[Path, Path, bytes, bytes]:
    root, outside = tmp_path / "models", tmp_path / "outside"
    outside.mkdir()
    canary_png = encode_png(make_ng(31337, 96).image)
    token = secrets.token_hex(16).encode()
    (outside / "canary.png").write_bytes(canary_png)
    (outside / "canary.txt").write_bytes(token)
    (outside / "recipe.json").write_bytes(b'{"mm_per_px": 0.1, "canary": "' + token + b'"}')
    return root, outside, canary_png, token


def leaked(response: httpx.Response, canary_png: bytes, token: bytes) -> bool:
    body = response.content
    return token in body or canary_png[100:164] in body


def test_traversal_in_every_id_and_file_name_field(live_server, tmp_path, report):
    root, outside, canary_png, token = plant(tmp_path)
    server = live_server()
    spec = server.app.openapi()
    ops = [op for op in operations(spec) if set(op.names) & set(PATH_LIKE) or op.files]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        fit = http.post("/fit_ok", data={**VALID, "use_dataset": "false"},
                        files=files("images", [ok_png(s) for s in range(4)]))  # fmt: skip
        assert fit.status_code == 200, fit.text
        up = http.post("/datasets/upload", data={**VALID}, files=files("images", [ok_png(9)]))
        name = up.json()["stored"][0]["name"]
        os.symlink(outside, root / "recipes" / "evil-link")  # a symlink inside the store
        before = snapshot(tmp_path, root)
        statuses: Counter[str] = Counter()
        problems: list[tuple[str, str, str, int]] = []
        requests = 0
        for op in ops:
            base = {**VALID, "name": name}
            attacks = [(field, value) for field in op.names if field in PATH_LIKE
                       for value in payloads(outside)]  # fmt: skip
            attacks += [("<filename>", value) for value in payloads(outside) if op.files]
            for field, value in attacks:
                values = base if field == "<filename>" else {**base, field: value}
                filename = value if field == "<filename>" else "image.png"
                r = send(http, op, values, image=ok_png(5), filename=filename)
                requests += 1
                statuses[f"{r.status_code // 100}xx"] += 1
                # every payload is an invalid recipe id, label or stored name, except the
                # symlink's name: a well-formed recipe id, refused where the store is used
                strict = field in ("label", "name") or (
                    field == "recipe_id" and value != "evil-link"
                )
                if r.status_code >= 500 or (strict and r.status_code < 400):
                    problems.append((op.label, field, repr(value), r.status_code))
                if leaked(r, canary_png, token):
                    problems.append((op.label, field, repr(value), -1))
        after = snapshot(tmp_path, root)
        store = ModelStore(root=root)
        model = store.load_model(store.ref("disc-a", "Master1", "inspection-1"))
    changed = sorted(set(before.items()) ^ set(after.items()))
    intact = model.version == fit.json()["model_version"]
    report(
        "S11", holds=not (problems or changed), operations=len(ops), requests=requests,
        statuses=dict(statuses), escapes=len([p for p in problems if p[3] == -1]) + len(changed),
        accepted_invalid_or_5xx=len([p for p in problems if p[3] != -1]),
        outside_tree_changes=len(changed), model_intact=intact,
    )  # fmt: skip
    assert not changed, changed[:10]
    assert not problems, problems[:10]
    assert intact


def test_symlinks_planted_inside_the_dataset_folder(live_server, tmp_path, report):
    """Someone with write access to the store plants a symlinked image (``ok/link.png``) and
    a symlinked label folder (``ng -> outside``); the API must not follow either."""
    root, outside, canary_png, token = plant(tmp_path)
    server = live_server()
    ids = {k: VALID[k] for k in ("recipe_id", "role_id", "roi_id")}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        up = http.post("/datasets/upload", data={**ids, "label": "ok"},
                       files=files("images", [ok_png(9)]))  # fmt: skip
        assert up.status_code == 200, up.text
        store = ModelStore(root=root)
        folder = store.datasets.folder(store.ref(*ids.values()))
        os.symlink(outside / "canary.png", folder / "ok" / "link.png")
        os.symlink(outside, folder / "ng")
        before = snapshot(tmp_path, root)
        steps = [
            ("list ok", "GET", "/datasets/list", {**ids, "label": "ok"}),
            ("read ok/link.png", "GET", "/datasets/file",
             {**ids, "label": "ok", "name": "link.png"}),
            ("zip", "GET", "/datasets/download", ids),
            ("list ng", "GET", "/datasets/list", {**ids, "label": "ng"}),
            ("read ng/canary.png", "GET", "/datasets/file",
             {**ids, "label": "ng", "name": "canary.png"}),
            ("infer_dataset", "POST", "/infer_dataset", ids),
        ]  # fmt: skip
        seen = {}
        for what, method, path, params in steps:
            kwargs = {"data": params} if method == "POST" else {"params": params}
            r = http.request(method, path, **kwargs)
            seen[what] = (r.status_code, leaked(r, canary_png, token) or b"canary" in r.content)
        r = http.post("/datasets/upload", data={**ids, "label": "ng"},
                      files=files("images", [ok_png(10)]))  # fmt: skip
        seen["upload ng"] = (r.status_code, False)
        written = sorted(set(snapshot(tmp_path, root)) - set(before))
        r = http.delete("/datasets/file", params={**ids, "label": "ng", "name": "canary.png"})
        seen["delete ng/canary.png"] = (r.status_code, False)
        deleted = not (outside / "canary.png").exists()
    reads = sorted(what for what, (_, leak) in seen.items() if leak)
    report(
        "S11", holds=not (reads or written or deleted), planted="ok/link.png, ng -> outside",
        read_escapes=reads, write_escapes=written, deleted_outside=deleted,
        statuses={what: status for what, (status, _) in seen.items()},
    )  # fmt: skip
    assert all(status < 500 for status, _ in seen.values()), seen
    if reads or written or deleted:
        raise ProductBug(f"followed symlinks: read {reads}, wrote {written}, deleted={deleted}")
