"""``bdi bench pipeline --models K1,K2,...``: the cost of many models in one frame stream.

For each K, in the same run and with the same consumers: the benchmark's one trained
model is stored under K ROI names (``inspection-1``, ``inspection-1-1``, ...); the
max-rate burst's frames, under new ids, name them round-robin, once as a warm-up (not
counted: the same parts, so the same consumers, name the same ROIs, and each consumer
loads the models it will be asked for) and once timed. Reported per K:
``pipeline_img_per_s``, its ratio to K = 1's, each consumer's resident memory (``VmRSS``)
after the burst, and the correctness counts (``wrong_roi``: a verdict naming another ROI
than its frame). Models are added as K grows,
so a consumer holds (at most) K models when its memory is read. With ``--rounds R`` the
Ks are timed R times, in turn (every other round in reverse order), each K keeping its
fastest burst (``passes_img_per_s`` lists them all; the counts cover every burst).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edge.simulator.camera import Camera

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from edge.bench.consumers import ConsumerGroup, PhaseResult
    from edge.simulator.camera import CameraFrame, VerdictReader
    from engine.patchcore import PatchCoreModel
    from store import ModelStore

    Phase = Callable[[list[CameraFrame]], Awaitable[PhaseResult]]


@dataclass
class RoundRobinCamera(Camera):
    """A camera whose frames may each name their own ROI (``rois``: frame id -> ROI id;
    a frame not in it names the camera's)."""

    rois: dict[str, str] = field(default_factory=dict)

    def _headers(self, frame: CameraFrame) -> list[tuple[str, bytes]]:
        headers = super()._headers(frame)
        roi = self.rois.get(frame.frame_id)
        if roi is None:
            return headers
        return [(k, roi.encode() if k == "roi_id" else v) for k, v in headers]


def roi_names(base: str, k: int) -> list[str]:
    """``base`` and ``k - 1`` more names for the same model."""
    return [base, *(f"{base}-{i}" for i in range(1, k))]


def parse_models(text: str) -> tuple[int, ...]:
    """``"1,8,32,128"`` -> ``(1, 8, 32, 128)``; ValueError (one clear line) otherwise."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"--models {text!r}: comma-separated model counts, e.g. 1,8,32,128"
        ) from None
    if not counts or min(counts) < 1 or max(counts) > 4096:
        raise ValueError(f"--models {text!r}: each count between 1 and 4096")
    return counts


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` (MB), None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class ModelSweep:
    """What one sweep needs of the running benchmark."""

    counts: Sequence[int]
    recipe: str
    role: str
    roi: str
    store: ModelStore
    model: PatchCoreModel
    camera: RoundRobinCamera
    reader: VerdictReader
    group: ConsumerGroup
    say: Callable[[str], None]

    async def run(
        self, burst: Sequence[CameraFrame], phase: Phase, rounds: int = 1
    ) -> list[dict[str, Any]]:
        """Each K in turn, ``rounds`` times (later rounds in reverse order, so that a slow
        spell of the machine does not fall on one K alone); each K keeps its fastest burst."""
        from edge.bench.consumers import recount

        stored: set[str] = {self.roi}
        passes: dict[int, list[tuple[PhaseResult, list[CameraFrame]]]] = {
            k: [] for k in self.counts
        }
        memory: dict[int, list[float | None]] = {}
        for r in range(rounds):
            for k in self.counts if r % 2 == 0 else self.counts[::-1]:
                names = roi_names(self.roi, k)
                for name in names:
                    if name not in stored:
                        ref = self.store.ref(self.recipe, self.role, name)
                        self.store.save_model(ref, self.model)
                        stored.add(name)
                timed = [replace(f, frame_id=f"{f.frame_id}-k{k}r{r}") for f in burst]
                self.camera.rois.update({f.frame_id: names[i % k] for i, f in enumerate(timed)})
                if r == 0:
                    # warm-up: the burst's frames under other ids, so the same parts
                    # (partitions, consumers) name the same ROIs: each consumer has loaded
                    # every model the burst will ask it for, as start-up preloading does
                    warm = [replace(f, frame_id=f"{f.frame_id}-k{k}w") for f in burst]
                    self.camera.rois.update({f.frame_id: names[i % k] for i, f in enumerate(warm)})
                    await phase(warm)
                result = await phase(timed)
                passes[k].append((result, timed))
                if r == 0:  # models are added as K grows: read while it holds K of them
                    memory[k] = [rss_mb(pid) for pid in self.group.pids]
                say = f"{k} models (round {r + 1}): {result.img_per_s:.1f} img/s"
                self.say(f"{say}, consumers' RSS {memory[k]} MB" if r == 0 else say)
        fastest = {k: max(runs, key=lambda run: run[0].img_per_s)[0] for k, runs in passes.items()}
        base = fastest[1 if 1 in fastest else self.counts[0]].img_per_s
        rows = []
        for k in self.counts:
            # the fastest burst's rate; the counts of every burst of this K
            each = [self._row(k, recount(res, fr, self.reader), fr, memory[k], base)
                    for res, fr in passes[k]]  # fmt: skip
            row = self._row(k, fastest[k], [], memory[k], base)
            for key in ("frames", "lost", "duplicates", "wrong", "wrong_roi"):
                row[key] = sum(e[key] for e in each)
            row["passes_img_per_s"] = [e["pipeline_img_per_s"] for e in each]
            rows.append(row)
        return rows

    def _row(
        self,
        k: int,
        result: PhaseResult,
        frames: list[CameraFrame],
        rss: list[float | None],
        base: float,
    ) -> dict[str, Any]:
        verdicts = self.reader.verdicts
        wrong_roi = sum(
            1
            for f in frames
            if verdicts.get(f.frame_id)
            and verdicts[f.frame_id][0].get("roi_id") != self.camera.rois[f.frame_id]
        )
        return {
            "models": k,
            "pipeline_img_per_s": round(result.img_per_s, 2),
            "ratio_to_1": round(result.img_per_s / base, 3) if base else None,
            "consumer_rss_mb": rss,
            "frames": result.frames,
            "lost": result.lost,
            "duplicates": result.duplicates,
            "wrong": result.wrong,
            "wrong_roi": wrong_roi,
        }
