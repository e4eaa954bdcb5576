"""Crop files: content-addressed, kept by what their frames need.

A crop is stored once per content, ``<root>/crops/<sha[:2]>/<sha>.png|.jpg|.bin`` (the
SHA-256 of the bytes as the camera sent them), written atomically. Each frame that showed
it has a *keep* decision (:func:`keep_of`); the crop's *kind* is the strongest of them
(:func:`crop_kind`): ``ng`` (an NG / ERROR / NO_MODEL frame, or any frame of a part that
is not OK), ``ok_sample`` (an OK frame picked by :func:`sampled`), ``pending`` (waiting for
the verdict or the part), or none (every frame dropped: the file goes). ``deleting``
marks a crop whose file is being removed (the row goes once the file is gone).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from store.atomic import ensure_dir, sweep, write_bytes

BAD_FRAME = frozenset({"NG", "ERROR", "NO_MODEL"})
# keep decisions of one frame
NG, OK_SAMPLE, DROP = "ng", "ok_sample", "drop"
# kinds of one crop (besides NG and OK_SAMPLE)
PENDING, DELETING = "pending", "deleting"
# an OK frame of a part whose record has not come after this long (its recipe has no plan,
# say) is dropped unless sampled
PART_WAIT_MS = 3_600_000
DAY_MS = 86_400_000


def sampled(frame_id: str, every: int) -> bool:
    """Whether an OK frame is in the kept sample of 1 in ``every`` (0: none). Decided by
    the frame id alone, so every process and every redelivery agrees."""
    if every <= 0:
        return False
    digest = hashlib.sha256(frame_id.encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") % every == 0


def keep_of(
    frame_verdict: str | None, part_id: str | None, part_verdict: str | None, in_sample: bool
) -> str | None:
    """What a frame's crop needs: :data:`NG`, :data:`OK_SAMPLE`, :data:`DROP`, or None
    (undecided: its verdict, or its part's, has not come yet)."""
    if frame_verdict in BAD_FRAME:
        return NG
    if part_verdict is not None and part_verdict != "OK":
        return NG
    if frame_verdict is None:
        return None
    if in_sample:
        return OK_SAMPLE
    if part_verdict == "OK" or part_id is None:
        return DROP
    return None


def crop_kind(keeps: list[str | None]) -> str | None:
    """The kind of a crop that frames with ``keeps`` showed; None: no frame needs it."""
    if NG in keeps:
        return NG
    if OK_SAMPLE in keeps:
        return OK_SAMPLE
    if None in keeps:
        return PENDING
    return None


def extension(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    return "bin"


class CropFiles:
    """The crop files under ``root`` (``<BDI_MODELS_DIR>/trace``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / "crops"

    def relative(self, sha256: str, data: bytes) -> str:
        return f"crops/{sha256[:2]}/{sha256}.{extension(data)}"

    def path(self, relative: str) -> Path:
        """The file of a stored relative path, checked to stay under the root."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"crop path {relative!r} leaves the trace folder")
        return path

    def write(self, relative: str, data: bytes) -> None:
        path = self.root / relative
        ensure_dir(path.parent)
        write_bytes(path, data)

    def remove(self, relative: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(relative))

    def sweep(self) -> int:
        """Temp files a killed writer left (``store.atomic``); returns how many."""
        if not self.folder.is_dir():
            return 0
        return sum(sweep(Path(entry.path)) for entry in os.scandir(self.folder) if entry.is_dir())
