"""Per-model drift monitoring in the consumer (docs/DRIFT.md).

:class:`DriftMonitor` keeps one detector (:mod:`consumers.drift_detectors`) per model,
keyed by the canonical ``(recipe_id, role_id, roi_id)``, and is fed, in the inference
thread, every scored frame's conformal p-value (OK and NG). It answers whether the model is
in drift (the verdict's ``drift`` flag) and, when a drift starts or ends, the
``bdi.alert/1`` record to publish with that frame's verdict (so the alert is delivered, or
in a transaction committed, with the verdict that raised it). A new model version is a new
calibration: its detector starts afresh, and a drift of the old version ends there.

What it knows is also shown by the health port (``drift`` in ``/health``, the ``bdi_drift``
gauges in ``/metrics``) and, for the REST API's ``GET /state`` (another process), written
to ``<BDI_MODELS_DIR>/.drift/<consumer id>.json`` (:mod:`consumers.drift_state`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from consumers.drift_detectors import ENDED, STARTED, Change, DriftDetector, make_detector
from consumers.drift_state import DriftStateFile
from consumers.outcome import OutRecord
from consumers.verdicts import now_iso

if TYPE_CHECKING:
    from configs.settings import Settings
    from store import ModelStore

log = logging.getLogger(__name__)

ALERT_SCHEMA = "bdi.alert/1"
ModelKey = tuple[str, str, str]  # (recipe_id, role_id, roi_id)
Canonical = Callable[[ModelKey], ModelKey]


@dataclass
class ModelDrift:
    """One model's detector and what the operator is shown of it."""

    detector: DriftDetector
    model_version: str | None
    frames: int = 0  # p-values fed since this version's detector started
    since: str | None = None  # when the current drift started (ISO 8601)

    def to_dict(self) -> dict[str, Any]:
        return {
            "drift": self.detector.in_drift,
            "since": self.since,
            "model_version": self.model_version,
            "frames": self.frames,
            "detector": self.detector.name,
            "statistic": round(self.detector.statistic, 6),
        }


def canonical_ids(store: ModelStore) -> Canonical:
    """A frame's ids as sent -> the model's canonical ids (as the store names them)."""

    def canonical(key: ModelKey) -> ModelKey:
        ref = store.ref(*key)
        return (ref.recipe_id, ref.role_id, ref.roi_id)

    return canonical


class DriftMonitor:
    """Thread-safe: fed from the inference thread, read by the health port's event loop.

    ``detector``: ``adwin``, ``martingale`` or ``off`` (``BDI_DRIFT``); ``canonical`` maps a
    frame's ids as sent to the model's canonical ones (recipe ids are case-insensitive);
    ``state``: the file ``GET /state`` reads (None: none written)."""

    def __init__(
        self,
        detector: str,
        alerts_topic: str,
        *,
        delta: float = 0.002,
        canonical: Canonical = lambda key: key,
        state: DriftStateFile | None = None,
    ) -> None:
        self.detector = detector
        self.delta = delta
        self.alerts_topic = alerts_topic
        self.canonical = canonical
        self.state = state
        self._models: dict[ModelKey, ModelDrift] = {}
        self._names: dict[ModelKey, ModelKey] = {}
        self._lock = threading.Lock()
        self._dirty = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        canonical: Canonical = lambda key: key,
        state_root: Path | None = None,
        consumer: str | None = None,
    ) -> DriftMonitor:
        state = None
        if state_root is not None and consumer is not None and settings.drift != "off":
            state = DriftStateFile(state_root, consumer)
        return cls(settings.drift, settings.kafka_topic_alerts, delta=settings.drift_delta,
                   canonical=canonical, state=state)  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.detector != "off"

    def observe(
        self, key: ModelKey | None, version: str | None, p_value: float | None
    ) -> tuple[bool, list[OutRecord]]:
        """One frame of model ``key`` (its ids as sent; None: no model) scored by ``version``
        with ``p_value`` (None: not scored, or no held-out scores): whether the model is in
        drift once this frame is counted, and the alert records to publish with its verdict."""
        if not self.enabled or key is None:
            return False, []
        with self._lock:
            name = self._name(key, scored=p_value is not None)
            if name is None:
                return False, []
            records: list[OutRecord] = []
            entry = self._models.get(name)
            if p_value is not None and (entry is None or entry.model_version != version):
                if entry is not None and entry.detector.in_drift:  # a new calibration
                    records.append(self._alert(name, entry, ENDED, "new model version"))
                entry = self._models[name] = ModelDrift(self._new_detector(), version)
                self._dirty = True
            if entry is None:
                return False, records
            if p_value is not None:
                entry.frames += 1
                change = entry.detector.update(p_value)
                if change is not None:
                    entry.since = now_iso() if change == STARTED else None
                    records.append(self._alert(name, entry, change, None))
                    self._dirty = True
            return entry.detector.in_drift, records

    def _name(self, key: ModelKey, scored: bool) -> ModelKey | None:
        name = self._names.get(key)
        if name is None and scored:  # a scored frame's ids are valid ones
            name = self._names[key] = self.canonical(key)
        return name

    def _new_detector(self) -> DriftDetector:
        return make_detector(self.detector, self.delta)

    def _alert(self, key: ModelKey, entry: ModelDrift, change: Change, reason: str | None
               ) -> OutRecord:  # fmt: skip
        value = {
            "schema": ALERT_SCHEMA,
            "kind": "drift",
            "state": change,
            "recipe_id": key[0],
            "role_id": key[1],
            "roi_id": key[2],
            "model_version": entry.model_version,
            "frames": entry.frames,
            "detector": entry.detector.name,
            "statistic": round(entry.detector.statistic, 6),
            "reason": reason,
            "produced_at": now_iso(),
        }
        headers = (("kind", b"drift"), ("state", change.encode()))
        return OutRecord(self.alerts_topic, "/".join(key).encode(), orjson.dumps(value), headers)

    # --- what the operator sees --------------------------------------------------------------
    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``"recipe/role/roi" -> {drift, since, model_version, frames, detector, statistic}``."""
        with self._lock:
            return {"/".join(k): m.to_dict() for k, m in sorted(self._models.items())}

    def save(self, every_s: float = 10.0) -> None:
        """Write the state file when a drift changed, a model appeared, or every ``every_s``
        seconds (so ``GET /state`` sees fresh statistics); blocking (inference thread)."""
        if self.state is None:
            return
        with self._lock:
            due = self._dirty or time.monotonic() - self.state.written_at >= every_s
            self._dirty = False
        if due:
            try:
                self.state.write(self.snapshot())
            except OSError as exc:  # a report, never a reason to fail the batch
                log.warning("cannot write the drift state", extra={"error": repr(exc)})

    def close(self) -> None:
        """A consumer that stops cleanly takes its report back (its partitions move on)."""
        if self.state is not None:
            self.state.remove()


def metrics_lines(drift: dict[str, dict[str, Any]]) -> list[str]:
    """Prometheus lines of :meth:`DriftMonitor.snapshot` for the health port's ``/metrics``."""
    if not drift:
        return []
    lines = [
        "# HELP bdi_drift 1 while the model's p-values have drifted from its calibration",
        "# TYPE bdi_drift gauge",
    ]
    labels = {}
    for key, d in drift.items():
        recipe, role, roi = key.split("/", 2)
        labels[key] = f'recipe_id="{recipe}",role_id="{role}",roi_id="{roi}"'
        lines.append(f"bdi_drift{{{labels[key]}}} {int(bool(d['drift']))}")
    lines += [
        "# HELP bdi_drift_statistic The drift detector's statistic (adwin: mean p-value of its "
        "window; martingale: log10 of the CUSUM martingale)",
        "# TYPE bdi_drift_statistic gauge",
    ]
    lines += [f"bdi_drift_statistic{{{labels[k]}}} {d['statistic']}" for k, d in drift.items()]
    return lines
