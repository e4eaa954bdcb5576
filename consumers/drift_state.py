"""The drift state a consumer shares with the REST API (another process).

Each consumer writes ``<BDI_MODELS_DIR>/.drift/<consumer id>.json`` atomically (temp file,
fsync, rename): ``{"consumer", "updated_at", "models": {"recipe/role/roi": {...}}}``, when
a drift starts or ends, when a model appears, and at least every 10 s while frames flow;
it removes the file when it stops cleanly. :func:`read_drift` merges the files for
``GET /state``. No torch, no Kafka client: the API imports this module alone.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any

import orjson

from store.atomic import ensure_dir, write_bytes

FOLDER = ".drift"
# what each model's entry holds (consumers.drift.ModelDrift.to_dict)
REPORT_KEYS = {"drift", "since", "model_version", "frames", "detector", "statistic"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def drift_dir(models_root: Path) -> Path:
    return models_root / FOLDER


class DriftStateFile:
    def __init__(self, models_root: Path, consumer: str) -> None:
        self.consumer = consumer
        self.path = drift_dir(models_root) / f"{_UNSAFE.sub('_', consumer)}.json"
        self.written_at = 0.0  # monotonic

    def write(self, models: dict[str, dict[str, Any]]) -> None:
        ensure_dir(self.path.parent)
        doc = {"consumer": self.consumer, "updated_at": time.time(), "models": models}
        write_bytes(self.path, orjson.dumps(doc), sync_dir=False)
        self.written_at = time.monotonic()

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def read_drift(models_root: Path, key: str) -> list[dict[str, Any]]:
    """Every consumer's report on model ``key`` ("recipe/role/roi", canonical ids): its
    ``drift``, ``since``, ``model_version``, ``frames``, ``detector``, ``statistic``, plus
    ``consumer`` and ``updated_at`` (a consumer that died leaves its last report, dated)."""
    folder = drift_dir(models_root)
    if not folder.is_dir():
        return []
    reports = []
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue  # a writer's temp file
        try:
            doc = orjson.loads(path.read_bytes())
            entry = doc["models"].get(key)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # removed or replaced while listed: the next read sees it
        if isinstance(entry, dict) and entry.keys() >= REPORT_KEYS:
            reports.append({**entry, "consumer": doc.get("consumer"),
                            "updated_at": doc.get("updated_at")})  # fmt: skip
    return reports
