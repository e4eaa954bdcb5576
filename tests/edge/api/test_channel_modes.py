"""Grey and colour images over REST: a frame of the other channel mode than the model's
training images is refused (422 ``channel_mismatch``), never scored silently."""

from __future__ import annotations

import cv2
import httpx

from edge.simulator.discs import make_ok
from tests.helpers.api import IDS, files
from tests.helpers.images import SIZE, ok_png, png


def grey_png(seed: int) -> bytes:
    """A one-channel PNG of an OK disc, as a grey camera sends it."""
    return png(cv2.cvtColor(make_ok(seed, SIZE).image, cv2.COLOR_RGB2GRAY))


def fit_ok(http: httpx.Client, blobs: list[bytes], **form: str) -> httpx.Response:
    data = {**IDS, "mm_per_px": "0.1", **form}
    return http.post("/fit_ok", data=data, files=files("images", blobs))


def infer(http: httpx.Client, blob: bytes) -> httpx.Response:
    return http.post("/infer", data=IDS, files=files("image", [blob]))


def test_a_grey_frame_against_a_colour_model_is_a_422_over_real_http(live_server) -> None:
    server = live_server()
    with httpx.Client(base_url=server.url, timeout=120) as http:
        mixed = fit_ok(http, [ok_png(0), ok_png(1), ok_png(2), grey_png(3)])
        assert mixed.status_code == 422, mixed.text
        body = mixed.json()
        assert body["error"] == "channel_mismatch"
        assert "1 grey, 3 colour" in body["detail"] and body["request_id"]
        assert http.get("/state", params=IDS).json()["version"] is None  # nothing stored

        assert fit_ok(http, [ok_png(s) for s in range(6)]).status_code == 200
        colour = infer(http, ok_png(100))
        assert colour.status_code == 200, colour.text
        assert colour.json()["verdict"] in ("OK", "NG")

        refused = infer(http, grey_png(100))
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert body["error"] == "channel_mismatch"
        assert body["detail"] == (
            "ChannelMismatchError: model trained on colour images, frame is grey"
        )
        assert "Traceback" not in refused.text

        appended = fit_ok(http, [grey_png(7), grey_png(8)], mode="append")
        assert appended.status_code == 422, appended.text
        assert appended.json()["error"] == "channel_mismatch"
