"""A few images of a real MVTec-layout data set, as a data set of their own (for smoke runs
of the benchmarks that read one)."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _first(folder: Path, n: int) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]


def mvtec_subset(source: Path, dest: Path, train: int, good: int, defect: int) -> Path:
    """``dest``: the first ``train`` images of ``source/train/good``, ``good`` of
    ``source/test/good`` and ``defect`` of each ``source/test/<defect>`` (with their masks),
    linked in the same layout."""
    picks = [("train/good", train), ("test/good", good)]
    picks += [(f"test/{d.name}", defect) for d in sorted((source / "test").iterdir())
              if d.is_dir() and d.name != "good"]  # fmt: skip
    for folder, n in picks:
        (dest / folder).mkdir(parents=True)
        for path in _first(source / folder, n):
            (dest / folder / path.name).symlink_to(path)
            mask = source / "ground_truth" / Path(folder).name / f"{path.stem}_mask.png"
            if folder.startswith("test/") and mask.is_file():
                (dest / "ground_truth" / Path(folder).name).mkdir(parents=True, exist_ok=True)
                (dest / "ground_truth" / Path(folder).name / mask.name).symlink_to(mask)
    return dest
