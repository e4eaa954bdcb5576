"""Work that outlives its request: an in-process registry of jobs, each run in its own
worker thread, with the progress the engine reports (docs/UI.md, "Training jobs").

A job is one training of one model from the stored dataset (``kind="train"``). The registry
keeps every queued or running job and the last :data:`KEEP_FINISHED` finished ones; it lives
in the API process, so a restart forgets them (``GET /jobs/{job_id}`` then answers 404).
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from edge.api.diagnostics import Diagnostics, request_id_var
from edge.api.errors import NotFound, as_bdi_error
from edge.api.schemas import FitResult
from engine.training import Progress
from store import ModelRef

KEEP_FINISHED = 50
JobState = Literal["queued", "running", "done", "failed"]
Mode = Literal["fit", "append"]

# the share of the progress bar each stage of a training takes, in the order the engine
# reports them (measured shares of a CPU fit); a fit's held-out calibration images join the
# bank last, an "append" the engine reports that a fit's job calls "calibrate"
SPANS: dict[str, dict[str, tuple[float, float]]] = {
    "fit": {
        "loading": (0.0, 0.05), "embed": (0.05, 0.5), "coreset": (0.5, 0.75),
        "calibrate": (0.75, 0.95), "save": (0.95, 1.0),
    },
    "append": {
        "loading": (0.0, 0.05), "embed": (0.05, 0.5), "append": (0.5, 0.95), "save": (0.95, 1.0),
    },
}  # fmt: skip


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


@dataclass
class Job:
    """One job's record; changed only under the registry's lock."""

    job_id: str
    kind: Literal["train"]
    ref: ModelRef
    mode: Mode
    user: str | None
    request_id: str | None  # the request that started it, on the job's log lines
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    state: JobState = "queued"
    stage: str = "queued"
    done: int = 0
    total: int = 0
    fraction: float = 0.0
    result: FitResult | None = None
    error: dict[str, Any] | None = None
    finished_ms: int | None = None

    def report(self, stage: str, done: int, total: int) -> None:
        """The engine's ``progress(stage, done, total)``; the fraction never goes back."""
        if stage == "append" and self.mode == "fit":
            stage = "calibrate"
        lo, hi = SPANS[self.mode].get(stage, (self.fraction, self.fraction))
        share = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
        self.stage, self.done, self.total = stage, done, total
        # below 1 until the job is done (the last stage's end is the save's, not reported)
        self.fraction = min(max(self.fraction, lo + (hi - lo) * share), 0.999)

    def to_dict(self) -> dict[str, Any]:
        ids = self.ref.ids()
        return {
            "job_id": self.job_id, "kind": self.kind, "recipe_id": ids["recipe_id"],
            "role_id": ids["role_id"], "roi_id": ids["roi_id"], "model_key": ids.get("model_key"),
            "mode": self.mode, "state": self.state,
            "progress": {
                "stage": self.stage, "done": self.done, "total": self.total,
                "fraction": round(self.fraction, 4),
            },
            "result": None if self.result is None else self.result.model_dump(),
            "error": self.error, "started_at": _iso(self.started_ms),
            "finished_at": _iso(self.finished_ms), "user": self.user,
        }  # fmt: skip


def error_of(exc: BaseException) -> dict[str, Any]:
    """A failed job's ``error``: the code, message and status ``POST /fit_ok`` would have
    answered; server-side detail (paths) stays in the diagnostics log."""
    err = as_bdi_error(exc)
    if err is None:
        return {
            "code": "internal_error", "status": 500,
            "message": "server error (internal_error); details in the diagnostics log",
        }  # fmt: skip
    message = err.message
    if err.status >= 500 and not err.public:
        message = f"server error ({err.code}); details in the diagnostics log"
    return {"code": err.code, "message": message, "status": err.status}


Work = Callable[[Progress], FitResult]


def _level(error: dict[str, Any] | None) -> str:
    if error is None:
        return "info"
    return "error" if error["status"] >= 500 else "warning"


class Jobs:
    """The app's jobs, thread-safe: :meth:`start` runs one in a new worker thread."""

    def __init__(self, diagnostics: Diagnostics, keep_finished: int = KEEP_FINISHED) -> None:
        self.diagnostics = diagnostics
        self.keep_finished = keep_finished
        self._jobs: dict[str, Job] = {}  # in start order
        self._finished: deque[str] = deque()  # in finish order
        self._lock = threading.Lock()

    def start(
        self,
        ref: ModelRef,
        mode: Mode,
        user: str | None,
        request_id: str | None,
        work: Work,
        release: Callable[[], None],
    ) -> dict[str, Any]:
        """Queue a training of ``ref`` and run ``work(progress)`` in a worker thread;
        ``release`` is called when it ends, however it ends. Answers the job as queued."""
        job = Job(uuid.uuid4().hex, "train", ref, mode, user, request_id)
        with self._lock:
            self._jobs[job.job_id] = job
            snapshot = job.to_dict()
        thread = threading.Thread(
            target=self._run, args=(job, work, release), name=f"job-{job.job_id[:8]}", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            with self._lock:
                del self._jobs[job.job_id]
            raise
        return snapshot

    def get(self, job_id: str) -> dict[str, Any]:
        """The job as it is now; 404 ``job_not_found`` for one this process does not know."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound(
                    f"no job {job_id[:64]!r} (jobs live in the API process: a restart "
                    f"forgets them, and only the last {self.keep_finished} finished are kept)",
                    code="job_not_found",
                )
            return job.to_dict()

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs, newest first."""
        with self._lock:
            return [job.to_dict() for job in reversed(self._jobs.values())][:limit]

    def _report(self, job: Job) -> Progress:
        def progress(stage: str, done: int, total: int) -> None:
            with self._lock:
                job.report(stage, done, total)

        return progress

    def _run(self, job: Job, work: Work, release: Callable[[], None]) -> None:
        request_id_var.set(job.request_id)  # the training's log lines name the request too
        with self._lock:
            job.state = "running"
        started = time.perf_counter()
        try:
            result = work(self._report(job))
        except Exception as exc:  # noqa: BLE001 - the job records it, the thread ends
            self._finish(job, None, error_of(exc), started, exc)
        else:
            self._finish(job, result, None, started, None)
        finally:
            release()

    def _finish(
        self,
        job: Job,
        result: FitResult | None,
        error: dict[str, Any] | None,
        started: float,
        exc: BaseException | None,
    ) -> None:
        with self._lock:
            job.result, job.error = result, error
            job.finished_ms = int(time.time() * 1000)
            if result is not None:
                job.state, job.stage, job.fraction = "done", "done", 1.0
                job.done = job.total = 1
            else:
                job.state = "failed"
            # forget the oldest finished jobs past keep_finished
            self._finished.append(job.job_id)
            while len(self._finished) > self.keep_finished:
                del self._jobs[self._finished.popleft()]
        extra = {}
        if exc is not None:
            extra = {"exception": type(exc).__name__, "message": str(exc)}
            if error is not None and error["status"] >= 500:
                extra["traceback"] = "".join(traceback.format_exception(exc))
        self.diagnostics.log(
            "job", level=_level(error), request_id=job.request_id,
            job_id=job.job_id,
            kind=job.kind, **job.ref.ids(), mode=job.mode, user=job.user, state=job.state,
            error=None if error is None else error["code"],
            duration_ms=round((time.perf_counter() - started) * 1e3, 3), **extra,
        )  # fmt: skip
