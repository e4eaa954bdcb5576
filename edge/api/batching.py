"""Dynamic batching of REST inference, as Triton's dynamic batcher does for its clients.

Concurrent ``/infer`` requests and the chunks of ``/infer_dataset`` queue their decoded
frames here. One task gathers up to ``max_frames`` (``BDI_REST_BATCH_MAX``) of them, across
models, waiting at most ``wait_ms`` (``BDI_REST_BATCH_WAIT_MS``) from the oldest one's
arrival, and scores them in one :meth:`Engine.infer` on its own worker thread; the next
batch gathers meanwhile. Each request gets exactly its own frames' results.

- A frame's failure is confined to it: the engine answers it ``ERROR``; should the whole
  engine call raise, each frame is scored again alone and gets its own answer or error.
- A request waits at most ``deadline_s`` (``BDI_REST_DEADLINE_S``) from being queued; then
  it is answered 503 + ``Retry-After`` at once, its frames are dropped from the queue (never
  scored for nobody) and a result that comes later is thrown away: never a stale answer.
- At most ``queue_max`` frames (``BDI_REST_QUEUE_MAX``) wait; one more request gets 429 +
  ``Retry-After`` (a request larger than the bound is admitted into an empty queue).

One engine call at a time also keeps concurrent requests from fighting over the cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from configs.settings import Settings
from edge.api.errors import DeadlineExceeded, QueueFull, Unavailable
from edge.api.metrics import ApiMetrics
from engine import Engine, Inference, InferItem

RETRY_AFTER_MAX_S = 60


@dataclass(eq=False)
class _Frame:
    item: InferItem
    queued_at: float  # loop time
    future: asyncio.Future[Inference] = field(repr=False)


class Batcher:
    """The queue of frames waiting for the engine, and the task that scores them."""

    def __init__(
        self,
        engine: Engine,
        metrics: ApiMetrics,
        max_frames: int = 0,
        wait_ms: float = 2.0,
        queue_max: int = 256,
        deadline_s: float = 30.0,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_frames = max_frames or engine.batch_size
        self.wait_s = wait_ms / 1000.0
        self.queue_max = queue_max
        self.deadline_s = deadline_s
        self._queue: deque[_Frame] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._scoring: list[_Frame] = []  # the batch in the engine
        self._s_per_frame = 0.0  # moving average of the engine's time per frame

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine, metrics: ApiMetrics) -> Batcher:
        return cls(
            engine, metrics, settings.rest_batch_max, settings.rest_batch_wait_ms,
            settings.rest_queue_max, settings.rest_deadline_s,
        )  # fmt: skip

    @property
    def depth(self) -> int:
        """Frames queued, not yet taken into a batch."""
        return len(self._queue)

    # --- the requests' side ---------------------------------------------------------------
    async def infer(self, items: Sequence[InferItem]) -> list[Inference]:
        """``items`` scored, in order, within the deadline (503) if the queue has room (429)."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        arrived = self._start(loop)
        if self._queue and len(self._queue) + len(items) > self.queue_max:
            self.metrics.queue_refusals.labels("queue_full").inc()
            raise QueueFull(
                f"{len(self._queue)} frames already wait for the engine (BDI_REST_QUEUE_MAX="
                f"{self.queue_max})",
                self.retry_after_s(),
            )
        now = loop.time()
        frames = [_Frame(item, now, loop.create_future()) for item in items]
        self._queue.extend(frames)
        self.metrics.queue_frames.set(len(self._queue))
        arrived.set()
        try:
            async with asyncio.timeout_at(now + self.deadline_s):
                return list(await asyncio.gather(*(f.future for f in frames)))
        except TimeoutError:
            self.metrics.queue_refusals.labels("deadline").inc()
            raise DeadlineExceeded(
                f"not scored within {self.deadline_s:g} s (BDI_REST_DEADLINE_S); "
                f"{len(self._queue)} frames wait for the engine",
                self.retry_after_s(),
            ) from None
        finally:
            for f in frames:  # dropped from the queue, or its late result ignored
                if not f.future.done():
                    f.future.cancel()
                elif not f.future.cancelled():
                    f.future.exception()  # seen: one error answers the request

    def retry_after_s(self) -> int:
        """Seconds until the frames queued now are likely scored (1 to 60)."""
        estimate = math.ceil(len(self._queue) * self._s_per_frame)
        return max(1, min(RETRY_AFTER_MAX_S, estimate))

    # --- the worker's side ----------------------------------------------------------------
    def _start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """The wake-up event, and the worker task on this loop (started by the first frame)."""
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._arrived = asyncio.Event()
            self._executor = self._executor or ThreadPoolExecutor(1, "bdi-rest-batch")
            self._task = loop.create_task(self._run(), name="bdi-rest-batcher")
        assert self._arrived is not None
        return self._arrived

    async def stop(self) -> None:
        """Stop the worker; the requests of frames still queued or being scored are
        answered 503."""
        if self._task is not None:
            self._task.cancel()
            if self._task.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        for f in [*self._scoring, *self._queue]:
            if not f.future.done():
                f.future.set_exception(Unavailable("the API is shutting down: retry"))
        self._queue.clear()
        self._scoring = []
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        arrived = self._arrived
        assert arrived is not None
        while True:
            while not self._queue:
                arrived.clear()
                await arrived.wait()
            # wait for company until the oldest frame has waited wait_ms (none once full)
            until = self._queue[0].queued_at + self.wait_s
            while len(self._queue) < self.max_frames and (left := until - loop.time()) > 0:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), left)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._score(loop, batch)

    def _take(self) -> list[_Frame]:
        """Up to ``max_frames`` queued frames whose requests still wait (past their
        deadline a request's frames are cancelled: dropped here, never scored)."""
        batch: list[_Frame] = []
        while self._queue and len(batch) < self.max_frames:
            frame = self._queue.popleft()
            if not frame.future.done():
                batch.append(frame)
        self.metrics.queue_frames.set(len(self._queue))
        return batch

    async def _score(self, loop: asyncio.AbstractEventLoop, batch: list[_Frame]) -> None:
        self.metrics.batch_frames.observe(len(batch))
        self._scoring = batch
        started = loop.time()
        try:
            results = await loop.run_in_executor(
                self._executor, self.engine.infer, [f.item for f in batch]
            )
        except Exception:  # noqa: BLE001 - confined below: each frame gets its own answer
            await self._score_alone(loop, batch)
            return
        finally:
            self._scoring = []
        per_frame = (loop.time() - started) / len(batch)
        self._s_per_frame = per_frame if not self._s_per_frame else (
            0.8 * self._s_per_frame + 0.2 * per_frame
        )  # fmt: skip
        for frame, result in zip(batch, results, strict=True):
            if not frame.future.done():  # a request past its deadline has gone
                frame.future.set_result(result)

    async def _score_alone(self, loop: asyncio.AbstractEventLoop, batch: list[_Frame]) -> None:
        """Each frame in its own engine call: its result, or its own exception (the error
        table then answers it as it would a request scored alone)."""
        for frame in batch:
            if frame.future.done():
                continue
            try:
                (result,) = await loop.run_in_executor(
                    self._executor, self.engine.infer, [frame.item]
                )
            except Exception as exc:  # noqa: BLE001 - handed to the request it belongs to
                if not frame.future.done():
                    frame.future.set_exception(exc)
                continue
            if not frame.future.done():
                frame.future.set_result(result)
