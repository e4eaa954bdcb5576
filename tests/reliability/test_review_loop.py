"""S23: the review loop end to end through a real broker (docs/REVIEW.md). A camera sends a
disc the model rejects; the consumer judges it NG on ``bdi.verdicts``; the trace feed stores
the verdict and keeps the crop; an engineer overrules the verdict over REST with
``append=true``; the crop is then in the OK dataset with its provenance and in the memory
bank of a new model version; the same frame sent again is judged OK by that version (the
consumer picks the new version up from the store on its own)."""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import pytest

from consumers.topics import ensure_topics
from consumers.trace_feed import TraceFeed
from edge.simulator.discs import encode_png, make_ng
from tests.helpers.consumer import GROUP_OPTIONS
from tests.helpers.images import SIZE
from tests.helpers.kafka import RECIPE, ROI, ROLE, FrameSpec, camera, headers, publish, running
from tests.helpers.probes import TopicLog

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

IDS = {"recipe_id": RECIPE, "role_id": ROLE, "roi_id": ROI}
FRAME_ID = "cam1-review-0001"
WAIT_S = 120.0
RESENDS = 20  # the consumer checks the store every model_poll_s; a few sends at most


async def poll(func, what: str, timeout_s: float = WAIT_S):
    """``func()`` (blocking, run in a thread) until it returns something true."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await asyncio.to_thread(func)
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def test_an_overruled_ng_is_appended_and_the_frame_sent_again_scores_ok(
    kafka_broker, make_topics, trained, live_server, tmp_path, report
):
    models = tmp_path / "models"  # the live server's store (tests/conftest.py)
    shutil.copytree(trained.models_dir, models)
    server = live_server(image_size=SIZE)
    topics = make_topics(partitions=1)
    boot = kafka_broker.bootstrap
    parts = f"{topics.frames}.parts"
    asyncio.run(ensure_topics(boot, {parts: 1}))
    settings = trained.settings(
        models_dir=models, model_poll_s=0.1, kafka_topic_parts=parts,
        trace_group=f"{topics.group}-trace", **topics.settings(boot),
    )  # fmt: skip
    disc = make_ng(50_123, SIZE)  # a disc the model rejects (its "defect": a false reject)
    spec = FrameSpec(FRAME_ID, encode_png(disc.image),
                     headers(FRAME_ID, mm_per_px="0.1"), FRAME_ID.encode())  # fmt: skip
    http = httpx.Client(base_url=server.url, timeout=60)

    def trace_has_crop() -> dict | None:
        r = http.get(f"/frames/{FRAME_ID}")
        return r.json() if r.status_code == 200 and r.json()["crop_url"] else None

    async def scenario() -> dict:
        consumer = trained.consumer(settings)
        feed = TraceFeed(settings, consumer_options=dict(GROUP_OPTIONS))
        log = await TopicLog(boot, topics.verdicts).start()
        cam = await camera(boot)
        feeding = asyncio.create_task(feed.run())
        try:
            async with running(consumer) as task:
                await publish(cam, topics.frames, [spec])
                assert not await log.wait_for({FRAME_ID}, WAIT_S)
                (first,) = log.values
                stored = await poll(trace_has_crop, "the trace to keep the crop")
                review = await asyncio.to_thread(
                    http.post, f"/frames/{FRAME_ID}/review",
                    json={"decision": "overrule", "reviewer": "ana.silva",
                          "reason": "a casting mark, not a crack", "append": True},
                )  # fmt: skip
                assert review.status_code == 200, review.text
                new_version = review.json()["new_model_version"]
                again, sends = None, 0
                while sends < RESENDS:  # until the consumer judges with the new version
                    sends += 1
                    seen = len(log.values)
                    await publish(cam, topics.frames, [spec])
                    deadline = time.monotonic() + WAIT_S
                    while len(log.values) == seen:
                        assert time.monotonic() < deadline, "no verdict of the frame sent again"
                        await log.sync()
                    again = log.values[-1]
                    if again["model_version"] == new_version:
                        break
                    await asyncio.sleep(0.3)
                assert not task.done()
        finally:
            feed.request_stop()
            await feeding
            await cam.stop()
            await log.stop()
        return {"first": first, "stored": stored, "review": review.json(), "again": again,
                "sends": sends}  # fmt: skip

    try:
        got = asyncio.run(scenario())
        listing = http.get("/datasets/list", params={**IDS, "with_meta": "true"}).json()
        state = http.get("/state", params=IDS).json()
        reviews = http.get(f"/frames/{FRAME_ID}/reviews").json()["reviews"]
    finally:
        http.close()
    first, review, again = got["first"], got["review"], got["again"]
    (item,) = listing["ok"]
    holds = (
        first["verdict"] == "NG" and first["model_version"] == trained.version
        and review["dataset_label"] == "ok" and item["name"] == review["dataset_item"]
        and again["verdict"] == "OK" and again["model_version"] == review["new_model_version"]
    )  # fmt: skip
    report(
        "S23", holds=holds, first_verdict=first["verdict"], first_score=first["score"],
        threshold=first["threshold"], model_version=first["model_version"],
        new_model_version=review["new_model_version"], again_verdict=again["verdict"],
        again_score=again["score"], sends_until_new_version=got["sends"],
    )  # fmt: skip
    assert first["verdict"] == "NG" and first["model_version"] == trained.version
    assert got["stored"]["verdict"]["verdict"] == "NG"
    assert review["appended"] and review["dataset_label"] == "ok"
    assert review["model_version"] == trained.version != review["new_model_version"]
    provenance = item["meta"]["extra"]["review"]
    assert (provenance["frame_id"], provenance["verdict"], provenance["reviewer"]) == (
        FRAME_ID, "NG", "ana.silva",
    )  # fmt: skip
    assert provenance["model_version"] == trained.version
    assert provenance["image_sha256"] == first["image_sha256"]
    assert state["version"] == review["new_model_version"]
    assert [r["review_id"] for r in reviews] == [review["review_id"]]
    assert again["model_version"] == review["new_model_version"], "the new version was used"
    assert again["verdict"] == "OK" and again["score"] < again["threshold"]
    assert again["threshold"] == first["threshold"]  # one image appended: threshold kept
