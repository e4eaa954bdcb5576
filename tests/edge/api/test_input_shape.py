"""Input shapes over REST: an "aspect" model (``BDI_INPUT_MODE=aspect``) refuses a frame of
another aspect ratio (422 ``shape_mismatch``) rather than squashing it silently."""

from __future__ import annotations

import httpx

from edge.simulator.discs import make_ok
from tests.helpers.api import IDS, files
from tests.helpers.images import SIZE, ok_png, png


def strip_png(seed: int) -> bytes:
    """The upper half of an OK disc's image: a crop twice as wide as it is high."""
    return png(make_ok(seed, SIZE).image[: SIZE // 2])


def fit_ok(http: httpx.Client, blobs: list[bytes]) -> httpx.Response:
    data = {**IDS, "mm_per_px": "0.1"}
    return http.post("/fit_ok", data=data, files=files("images", blobs))


def infer(http: httpx.Client, blob: bytes) -> httpx.Response:
    return http.post("/infer", data=IDS, files=files("image", [blob]))


def test_a_frame_of_another_shape_is_a_422_over_real_http(live_server) -> None:
    server = live_server(input_mode="aspect")
    with httpx.Client(base_url=server.url, timeout=120) as http:
        mixed = fit_ok(http, [strip_png(0), strip_png(1), strip_png(2), ok_png(3)])
        assert mixed.status_code == 422, mixed.text
        body = mixed.json()
        assert body["error"] == "shape_mismatch" and body["request_id"]
        assert "1 of 4 images differ in aspect ratio" in body["detail"]

        assert fit_ok(http, [strip_png(s) for s in range(6)]).status_code == 200
        scored = infer(http, strip_png(100))
        assert scored.status_code == 200, scored.text
        assert scored.json()["verdict"] in ("OK", "NG")

        refused = infer(http, ok_png(100))
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert body["error"] == "shape_mismatch"
        assert body["detail"].startswith(f"ShapeMismatchError: frame of {SIZE}x{SIZE} px")
        assert "Traceback" not in refused.text
