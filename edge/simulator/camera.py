"""The other ends of the line, for the demo and the pipeline benchmark: a synthetic camera
that publishes disc frames to the frames topic, and a reader that collects verdicts.

Both speak the contracts of ``docs/KAFKA.md`` over the wire, like any camera or MES would.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumers.topics import start_client, stop_consumer, topic_partitions
from edge.simulator.discs import encode_png, make_disc, stream


@dataclass(frozen=True)
class CameraFrame:
    frame_id: str
    part_id: str
    value: bytes
    defect: str | None


def synthetic_frames(
    n: int, size: int, seed: int = 0, ng_fraction: float = 0.05, prefix: str = "cam"
) -> list[CameraFrame]:
    """``n`` encoded synthetic disc ROIs (a ``ng_fraction`` share defective), in order."""
    out = []
    for i, disc in enumerate(stream(seed, n, size, ng_fraction)):
        out.append(
            CameraFrame(
                f"{prefix}-{seed}-{i:06d}",
                f"disc-{seed}-{i:06d}",
                encode_png(disc.image),
                disc.defect,
            )  # fmt: skip
        )
    return out


def training_images(n: int, size: int, seed: int = 1_000_000) -> list[bytes]:
    """OK images for training, from seeds no camera stream uses."""
    return [encode_png(make_disc(seed + i, size).image) for i in range(n)]


@dataclass
class Camera:
    """Publishes frames with the contract headers; records when each one was sent."""

    bootstrap: str
    topic: str
    recipe_id: str
    role_id: str
    roi_id: str
    mm_per_px: float | None = None
    # TLS / SASL arguments (consumers.security.security_options); never printed
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    sent_at: dict[str, float] = field(default_factory=dict)
    _producer: AIOKafkaProducer | None = None

    async def start(self) -> Camera:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            max_request_size=16 << 20,
            linger_ms=2,
            **self.options,
        )
        await start_client(self.bootstrap, self._producer, self.options)
        return self

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def _headers(self, frame: CameraFrame) -> list[tuple[str, bytes]]:
        h = {"frame_id": frame.frame_id, "part_id": frame.part_id, "recipe_id": self.recipe_id,
             "role_id": self.role_id, "roi_id": self.roi_id}  # fmt: skip
        if self.mm_per_px is not None:
            h["mm_per_px"] = str(self.mm_per_px)
        # what left the camera: a frame damaged on the way is refused, not scored
        h["content_sha256"] = hashlib.sha256(frame.value).hexdigest()
        return [(k, v.encode()) for k, v in h.items()]

    async def send(self, frame: CameraFrame) -> asyncio.Future[Any]:
        """Queue one frame; returns the delivery future (awaited by :meth:`flush`)."""
        assert self._producer is not None, "camera not started"
        self.sent_at[frame.frame_id] = time.monotonic()
        return await self._producer.send(
            self.topic, frame.value, key=frame.part_id.encode(), headers=self._headers(frame)
        )

    async def publish(self, frames: Sequence[CameraFrame], fps: float | None = None) -> None:
        """All ``frames``: as fast as the broker takes them, or paced at ``fps``."""
        pending = []
        start = time.monotonic()
        for i, frame in enumerate(frames):
            if fps:
                delay = start + i / fps - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.append(await self.send(frame))
        await asyncio.gather(*pending)


@dataclass
class VerdictReader:
    """Reads the verdicts topic from its current end (or the beginning) and keeps them."""

    bootstrap: str
    topic: str
    from_beginning: bool = False
    options: dict[str, Any] = field(default_factory=dict, repr=False)  # as the Camera's
    verdicts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    received_at: dict[str, float] = field(default_factory=dict)
    _consumer: AIOKafkaConsumer | None = None

    async def start(self) -> VerdictReader:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            **self.options,
        )
        await start_client(self.bootstrap, consumer, self.options)
        tps = await topic_partitions(consumer, self.topic)
        consumer.assign(tps)
        if self.from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
            for tp in tps:  # resolve the lazy seek now, so nothing sent later is skipped
                await consumer.position(tp)
        self._consumer = consumer
        return self

    async def stop(self) -> None:
        if self._consumer is not None:
            await stop_consumer(self._consumer)
            self._consumer = None

    async def poll(self, timeout_ms: int = 100) -> list[dict[str, Any]]:
        """Verdicts that arrived since the last call."""
        assert self._consumer is not None, "reader not started"
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        now = time.monotonic()
        out = []
        for records in batch.values():
            for rec in records:
                verdict = orjson.loads(rec.value)
                fid = verdict.get("frame_id")
                self.verdicts.setdefault(fid, []).append(verdict)
                self.received_at.setdefault(fid, now)
                out.append(verdict)
        return out

    async def wait_for(self, frame_ids: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not frame_ids <= self.verdicts.keys() and time.monotonic() < deadline:
            await self.poll()


def latencies_ms(camera: Camera, reader: VerdictReader, frame_ids: Sequence[str]) -> np.ndarray:
    """Send -> first verdict received, per answered frame (ms)."""
    return np.array(
        [
            (reader.received_at[f] - camera.sent_at[f]) * 1e3
            for f in frame_ids
            if f in reader.received_at and f in camera.sent_at
        ]  # fmt: skip
    )
