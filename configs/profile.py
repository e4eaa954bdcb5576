"""Profiles, and the local settings file that chooses one for every ``bdi`` command.

``production`` (the default) refuses to start without CUDA and uses DINOv2 ViT-S/14, whose
weights file must be given. ``dev`` fills in, where nothing else sets them, the CPU allowed
(``BDI_REQUIRE_CUDA=0``) and the packaged EfficientNet-Lite0 backbone; a weights file
(``BDI_BACKBONE_WEIGHTS``) keeps the production backbone.

The local settings file is ``bdi.env`` in the working directory, or the file ``BDI_ENV_FILE``
names: ``BDI_*`` lines as in the environment (which wins over it). ``make install`` writes
one that chooses ``dev`` on a machine without CUDA; ``make dev`` chooses ``dev`` anywhere::

    python -m configs auto|dev|production
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

Profile = Literal["production", "dev"]
PROFILES: tuple[str, ...] = get_args(Profile)
LOCAL_FILE = "bdi.env"
# what the dev profile fills in (settings field -> value) where no source sets the field
DEV_DEFAULTS: dict[str, Any] = {"require_cuda": False, "backbone": "efficientnet_lite0"}
# the one step that switches a machine to development, named by errors and docs
SWITCH_STEP = "`make dev` (writes BDI_PROFILE=dev to ./bdi.env)"

HEADER = """\
# Local BDI Edge settings, read by every `bdi` command started in this directory
# (BDI_* variables as in the environment, which wins over this file). Not in git.
# BDI_PROFILE=production (the default): CUDA required, DINOv2 with BDI_BACKBONE_WEIGHTS.
# BDI_PROFILE=dev: the CPU allowed and the packaged EfficientNet-Lite0, where unset.
"""


def local_file() -> Path | None:
    """The local settings file to read: ``BDI_ENV_FILE``, else ``./bdi.env``; ``None`` when
    there is none (``BDI_ENV_FILE=/dev/null`` reads none)."""
    named = os.environ.get("BDI_ENV_FILE")
    path = Path(named or LOCAL_FILE)
    if path.is_file():
        return path
    if named and named != os.devnull:
        raise FileNotFoundError(f"BDI_ENV_FILE={named}: no such file")
    return None


def profile_values(profile: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """What ``profile`` fills in: the fields that ``given`` (the sources above the profile)
    does not set. An explicit weights file keeps the production backbone."""
    if str(profile).strip().lower() != "dev":
        return {}
    out = {k: v for k, v in DEV_DEFAULTS.items() if k not in given}
    if given.get("backbone_weights"):
        out.pop("backbone", None)
    return out


def write_profile(profile: str, path: Path) -> None:
    """Set ``BDI_PROFILE`` in the local settings file ``path``, keeping its other lines
    (atomically: a reader sees the old file or the new one)."""
    lines = path.read_text().splitlines() if path.is_file() else HEADER.splitlines()
    kept = [ln for ln in lines if not ln.strip().removeprefix("export ").startswith("BDI_PROFILE=")]
    text = "\n".join([*kept, f"BDI_PROFILE={profile}"]) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in ("auto", *PROFILES):
        print("usage: python -m configs auto|dev|production", file=sys.stderr)
        return 2
    path = Path(os.environ.get("BDI_ENV_FILE") or LOCAL_FILE)
    choice = args[0]
    if choice == "auto":
        if path.is_file():
            print(f"{path}: kept as it is")
            return 0
        if _has_cuda():
            path.write_text(HEADER)
            print(f"{path}: written (this machine has CUDA: the production profile)")
            return 0
        choice = "dev"
    write_profile(choice, path)
    print(f"{path}: BDI_PROFILE={choice}" + ("" if args[0] != "auto" else " (no CUDA here)"))
    return 0
