"""Probes the scenarios share: process memory from /proc, latency percentiles, a reader
that follows a topic from its beginning as an MES would, and the marker for known bugs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.topics import stop_consumer, topic_partitions


class ProductBug(AssertionError):  # noqa: N818 - reads as what it is in xfail(raises=...)
    """A reproduced product bug, reported to the maintainers. Tests that reproduce one are
    marked ``xfail(strict=True, raises=ProductBug)``: any *other* failure still fails."""


def proc_memory(pid: int) -> dict[str, int]:
    """``{"rss_mib", "peak_mib"}`` of a live process (VmRSS, VmHWM of /proc/<pid>/status)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) // 1024
    return {"rss_mib": fields["VmRSS"], "peak_mib": fields["VmHWM"]}


def percentiles_ms(seconds: Iterable[float]) -> dict[str, float]:
    values = np.asarray(list(seconds), dtype=np.float64) * 1e3
    if not len(values):
        return {}
    return {
        "n": int(len(values)),
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p95_ms": round(float(np.percentile(values, 95)), 1),
        "max_ms": round(float(values.max()), 1),
    }


class TopicLog:
    """Every record of ``topic`` from its beginning (manual assignment, no group).
    :meth:`sync` reads up to the end offsets of the moment; ``values`` are parsed JSON."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        json_values: bool = True,
        isolation_level: str = "read_uncommitted",
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.json_values = json_values
        self.isolation_level = isolation_level  # "read_committed": as an exactly-once MES
        self.records: list[ConsumerRecord] = []
        self.values: list[dict[str, Any]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []

    async def start(self) -> TopicLog:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50,
            isolation_level=self.isolation_level,
        )  # fmt: skip
        await consumer.start()
        self._tps = await topic_partitions(consumer, self.topic)
        consumer.assign(self._tps)
        await consumer.seek_to_beginning(*self._tps)
        self._consumer = consumer
        return self

    async def stop(self) -> None:
        if self._consumer is not None:
            await stop_consumer(self._consumer)
            self._consumer = None

    async def sync(self, timeout_s: float = 30.0) -> list[ConsumerRecord]:
        """Read up to the topic's current end; returns the records new since the last call."""
        assert self._consumer is not None, "not started"
        consumer = self._consumer
        ends = await consumer.end_offsets(self._tps)
        new: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = {tp: await consumer.position(tp) for tp in self._tps}
            if all(positions[tp] >= ends[tp] for tp in self._tps):
                break
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                new.extend(part)
        self.records.extend(new)
        if self.json_values:
            self.values.extend(orjson.loads(r.value) for r in new)
        return new

    async def wait_for(self, frame_ids: set[str], timeout_s: float) -> set[str]:
        """Sync until every id in ``frame_ids`` has a verdict; returns the missing ones."""
        deadline = time.monotonic() + timeout_s
        while True:
            await self.sync()
            missing = frame_ids - self.answered_ids()
            if not missing or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(0.1)

    def answered_ids(self) -> set[str]:
        return {v["frame_id"] for v in self.values}

    def answered_offsets(self) -> set[tuple[int, int]]:
        return {(v["source"]["partition"], v["source"]["offset"]) for v in self.values}

    def by_id(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for v in self.values:
            out.setdefault(v["frame_id"], []).append(v)
        return out


def early_commits(
    commits: dict[int, int | None], answered: set[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Offsets below a partition's committed offset without any verdict: committed early."""
    return [(p, o) for p, c in commits.items() for o in range(c or 0) if (p, o) not in answered]


IDENTITY = ("verdict", "score", "threshold", "regions", "model_version", "source")


def differing_duplicates(by_id: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Frame ids whose verdicts disagree on what MES acts on (verdict, score, model, ...)."""
    return [
        fid
        for fid, answers in by_id.items()
        if len({orjson.dumps({k: a[k] for k in IDENTITY}) for a in answers}) > 1
    ]


class EngineProxy:
    """A real :class:`engine.Engine` behind a seam: everything is delegated, and scenarios
    override :meth:`infer` to delay it, gate it, record it or corrupt its answers."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def infer(self, items: Any) -> Any:
        return self.engine.infer(items)
