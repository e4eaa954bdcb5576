"""Dynamic batching of REST inference (edge/api/batching.py): concurrent requests share
engine calls, each gets exactly its own answer, errors stay with their request, deadlines
and the queue bound hold. Over real HTTP where the statuses matter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from edge.api.batching import Batcher
from edge.api.errors import DeadlineExceeded, QueueFull, Unavailable
from edge.api.metrics import ApiMetrics
from engine import InferItem
from engine.errors import DeviceError
from tests.helpers.api import IDS, LiveServer, files, fit
from tests.helpers.batching import Echo, GatedEngine
from tests.helpers.images import ng_png, ok_png

OTHER = {**IDS, "roi_id": "inspection-2"}


def _batcher(engine: Any, metrics: ApiMetrics, **options: Any) -> Batcher:
    return Batcher(engine, metrics, **options)


def _frame(value: int) -> InferItem:
    return InferItem(None, np.full((2, 2, 3), value, np.uint8))


# --- the batcher alone (an engine stand-in) --------------------------------------------
def test_concurrent_requests_share_engine_calls_and_get_their_own_results() -> None:
    engine = GatedEngine(Echo())
    metrics = ApiMetrics()

    async def main() -> list[list[float | None]]:
        batcher = _batcher(engine, metrics, max_frames=8, wait_ms=200)
        try:
            answers = await asyncio.gather(
                *(batcher.infer([_frame(v) for v in (k, k + 100)]) for k in range(4))
            )
        finally:
            await batcher.stop()
        return [[r.score for r in answer] for answer in answers]

    assert asyncio.run(main()) == [[k, k + 100] for k in range(4)]
    assert [len(call) for call in engine.calls] == [8]  # one engine call for the 4 requests
    assert metrics.registry.get_sample_value("bdi_rest_batch_frames_sum") == 8


def test_an_engine_call_that_raises_is_confined_to_the_frame_behind_it() -> None:
    def fail(items: Any) -> Exception | None:
        bad = any(item.image.flat[0] == 13 for item in items)
        return DeviceError("the device failed on frame 13") if bad else None

    engine = GatedEngine(Echo(), fail)

    async def main() -> list[Any]:
        batcher = _batcher(engine, ApiMetrics(), max_frames=8, wait_ms=200)
        try:
            return await asyncio.gather(
                *(batcher.infer([_frame(v)]) for v in (1, 13, 2)), return_exceptions=True
            )
        finally:
            await batcher.stop()

    one, bad, two = asyncio.run(main())
    assert isinstance(bad, DeviceError)  # the error table answers it 500 "device", as alone
    assert [r.score for r in one] == [1] and [r.score for r in two] == [2]
    # the batch of 3 raised; then each frame alone
    assert [len(c) for c in engine.calls] == [3, 1, 1, 1]


def test_a_request_past_its_deadline_is_dropped_before_the_engine_sees_it() -> None:
    engine = GatedEngine(Echo())
    engine.gate.clear()

    async def main() -> tuple[Any, Any, int]:
        batcher = _batcher(engine, ApiMetrics(), max_frames=1, wait_ms=0, deadline_s=0.3)
        first = asyncio.ensure_future(batcher.infer([_frame(1)]))
        while not engine.entered.is_set():  # the first frame is in the engine
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.infer([_frame(2)]))
        started = time.monotonic()
        done = await asyncio.gather(first, second, return_exceptions=True)
        waited = time.monotonic() - started
        engine.gate.set()
        await asyncio.sleep(0.2)  # the worker finishes the first batch and looks for more
        depth = batcher.depth
        await batcher.stop()
        assert waited < 1.0  # answered at its deadline, not when the engine came back
        return done[0], done[1], depth

    first, second, depth = asyncio.run(main())
    assert isinstance(first, DeadlineExceeded) and isinstance(second, DeadlineExceeded)
    assert second.headers["Retry-After"].isdigit()
    assert engine.frames_scored() == 1 and depth == 0  # frame 2 was never scored


def test_a_full_queue_refuses_with_retry_after_and_stop_answers_the_queued() -> None:
    engine = GatedEngine(Echo())
    engine.gate.clear()
    metrics = ApiMetrics()

    async def main() -> tuple[Any, Any]:
        batcher = _batcher(engine, metrics, max_frames=1, wait_ms=0, queue_max=2)
        running = asyncio.ensure_future(batcher.infer([_frame(1)]))
        while not engine.entered.is_set():
            await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(batcher.infer([_frame(2), _frame(3)]))
        await asyncio.sleep(0.05)
        assert batcher.depth == 2 == metrics.registry.get_sample_value("bdi_rest_queue_frames")
        with pytest.raises(QueueFull) as refused:
            await batcher.infer([_frame(4)])
        assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
        engine.gate.set()
        await batcher.stop()
        done = await asyncio.gather(running, queued, return_exceptions=True)
        return done[0], done[1]

    _, queued = asyncio.run(main())
    assert isinstance(queued, Unavailable) and queued.status == 503


# --- over real HTTP, with the real engine ----------------------------------------------
def _post(url: str, ids: dict[str, str], blob: bytes, heatmap: bool = False) -> httpx.Response:
    data = {**ids, "heatmap": "true"} if heatmap else ids
    return httpx.post(f"{url}/infer", data=data, files={"image": ("x.png", blob)}, timeout=120)


def _answer(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    body.pop("timings_ms")  # how long it took is all that may differ
    return body


def _at_once(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def _spy(server: LiveServer) -> GatedEngine:
    batcher = server.app.state.bdi.batcher
    spy = GatedEngine(batcher.engine)
    batcher.engine = spy
    return spy


@pytest.mark.slow
def test_batched_answers_are_the_answers_alone_across_models_and_datasets(
    live_server: Callable[..., LiveServer],
) -> None:
    """224 px, the default input size: the backbone's numbers for a frame do not depend on
    the frames beside it there (at 64 px oneDNN splits one small convolution differently
    for a batch of one, a last-bit difference)."""
    server = live_server(image_size=224, rest_batch_max=16, rest_batch_wait_ms=400)
    with httpx.Client(base_url=server.url, timeout=120) as http:
        assert fit(http).status_code == 200
        assert fit(http, n=6, roi_id=OTHER["roi_id"]).status_code == 200
        upload = files("images", [ok_png(40), ng_png(41)])
        assert http.post("/datasets/upload", data={**IDS, "label": "ok"}, files=upload).is_success
        blobs = [ok_png(100), ng_png(101, "rust"), ok_png(102)]
        cases = [(ids, blob, k == 1) for k, blob in enumerate(blobs) for ids in (IDS, OTHER)]
        spy = _spy(server)
        alone = [_answer(_post(server.url, *case)) for case in cases]
        dataset_alone = http.post("/infer_dataset", data=IDS).json()
        assert all(len(call) <= 2 for call in spy.calls)  # one frame, or the dataset's two
        spy.calls.clear()

        def dataset() -> httpx.Response:
            return httpx.post(f"{server.url}/infer_dataset", data=IDS, timeout=120)

        calls = [lambda case=case: _post(server.url, *case) for case in cases] + [dataset]
        together = _at_once(calls)
    assert [_answer(r) for r in together[:-1]] == alone
    assert together[-1].json() == dataset_alone
    assert max(len(call) for call in spy.calls) >= 4  # they did share engine calls...
    shared = max(spy.calls, key=len)
    assert len({id(item.model) for item in shared}) == 2  # ...across the two models
    assert sum(len(call) for call in spy.calls) == len(cases) + 2  # and nothing twice
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "bdi_rest_batch_frames_bucket" in metrics and "bdi_rest_queue_frames 0.0" in metrics


@pytest.mark.slow
def test_a_failing_request_is_confined_to_itself(live_server: Callable[..., LiveServer]) -> None:
    import dataclasses

    from engine.patchcore import PatchCoreModel

    server = live_server(rest_batch_max=16, rest_batch_wait_ms=400)
    with httpx.Client(base_url=server.url, timeout=120) as http:
        assert fit(http).status_code == 200
        assert fit(http, roi_id=OTHER["roi_id"]).status_code == 200
    store = server.app.state.bdi.store
    ref = store.ref(OTHER["recipe_id"], OTHER["role_id"], OTHER["roi_id"])
    model = store.load_model(ref)
    h, w = model.meta.grid  # a model whose token grid the backbone does not produce
    store.save_model(
        ref, PatchCoreModel(dataclasses.replace(model.meta, grid=(h + 1, w)), model.index,
                            model.calibration)
    )  # fmt: skip
    spy = _spy(server)
    good, bad, good2 = _at_once(
        [
            lambda: _post(server.url, IDS, ok_png(7)),
            lambda: _post(server.url, OTHER, ok_png(8)),
            lambda: _post(server.url, IDS, ng_png(9, "rust")),
        ]  # fmt: skip
    )
    assert bad.status_code == 400 and bad.json()["error"] == "token_grid_mismatch"
    assert good.json()["verdict"] == "OK" and good2.json()["verdict"] == "NG"
    assert [len(call) for call in spy.calls] == [3]  # in one engine call


@pytest.mark.slow
def test_deadline_is_a_503_with_retry_after_and_never_a_late_answer(
    live_server: Callable[..., LiveServer],
) -> None:
    server = live_server(rest_batch_max=1, rest_batch_wait_ms=0, rest_deadline_s=0.5)
    with httpx.Client(base_url=server.url, timeout=120) as http:
        assert fit(http).status_code == 200
    spy = _spy(server)
    spy.gate.clear()
    first = ThreadPoolExecutor(1).submit(_post, server.url, IDS, ok_png(7))
    assert spy.entered.wait(30)
    started = time.monotonic()
    late = _post(server.url, IDS, ok_png(8))
    took = time.monotonic() - started
    assert late.status_code == 503 and late.json()["error"] == "deadline_exceeded"
    assert late.headers["Retry-After"].isdigit() and took < 2.0
    assert first.result().status_code == 503  # its frame was in the engine at its deadline
    spy.gate.set()
    time.sleep(0.3)
    assert spy.frames_scored() == 1  # the second frame was dropped, never scored
    assert _post(server.url, IDS, ok_png(9)).status_code == 200  # the engine is back
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'bdi_rest_queue_refusals_total{reason="deadline"} 2.0' in metrics


@pytest.mark.slow
def test_a_full_queue_is_a_429_with_retry_after(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(rest_batch_max=1, rest_batch_wait_ms=0, rest_queue_max=1)
    with httpx.Client(base_url=server.url, timeout=120) as http:
        assert fit(http).status_code == 200
    spy = _spy(server)
    spy.gate.clear()
    pool = ThreadPoolExecutor(2)
    running = pool.submit(_post, server.url, IDS, ok_png(7))
    assert spy.entered.wait(30)
    queued = pool.submit(_post, server.url, IDS, ok_png(8))
    batcher = server.app.state.bdi.batcher
    deadline = time.monotonic() + 30
    while batcher.depth < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    refused = _post(server.url, IDS, ok_png(9))
    assert refused.status_code == 429 and refused.json()["error"] == "queue_full"
    assert refused.headers["Retry-After"].isdigit()
    spy.gate.set()
    assert running.result().status_code == 200 and queued.result().status_code == 200
    pool.shutdown()


@pytest.mark.slow
def test_infer_dataset_is_queued_an_engine_batch_at_a_time(
    live_server: Callable[..., LiveServer],
) -> None:
    server = live_server(rest_batch_max=16, rest_batch_wait_ms=0)
    with httpx.Client(base_url=server.url, timeout=120) as http:
        assert fit(http).status_code == 200
        upload = files("images", [ok_png(s) for s in range(50, 56)])
        assert http.post("/datasets/upload", data={**IDS, "label": "ok"}, files=upload).is_success
        spy = _spy(server)
        r = http.post("/infer_dataset", data=IDS)
    assert r.status_code == 200 and len(r.json()["results"]) == 6
    # engine batches of 4 (the tests' BDI_ENGINE_BATCH_SIZE), though 16 would fit
    assert [len(call) for call in spy.calls] == [4, 2]
