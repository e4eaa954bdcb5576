"""``bdi train`` and ``bdi models``: train into the model store, list what it holds.

Store errors subclass ``ValueError`` and engine errors ``EngineError``, so ``bdi``'s main
reports both as ``bdi: error: ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from configs.settings import load_settings
from store import ModelStore

TRAIN_EXTS = (".png", ".jpg", ".jpeg")  # what the engine's decoder reads


def add_store_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    train = sub.add_parser("train", help="train (and calibrate with NG images) into the store")
    train.add_argument("--recipe", required=True, help="recipe id (case-insensitive)")
    train.add_argument("--role", required=True, help="role id")
    train.add_argument("--roi", required=True, help="ROI id")
    train.add_argument("--ok", required=True, type=Path, help="folder of OK images")
    train.add_argument("--ng", type=Path, default=None, help="folder of NG images (calibrate)")
    train.add_argument("--mm-per-px", type=float, default=None, help="scale, locked per recipe")
    train.add_argument("--model-key", default=None, help="model folder (default: the ROI id)")
    train.add_argument("--json", action="store_true", help="print the result as one JSON line")
    train.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="list the stored models")
    models.add_argument("--recipe", default=None, help="only this recipe")
    models.add_argument("--json", action="store_true", help="print the manifest as JSON")
    models.set_defaults(func=cmd_models)


def _image_paths(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TRAIN_EXTS)
    if not paths:
        raise ValueError(f"no images in {folder}")
    return paths


class _Bars:
    """``progress(stage, done, total)`` callbacks drawn as one tqdm bar per stage (stderr)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._stage: str | None = None
        self._bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=total, desc=stage, file=sys.stderr, leave=True)
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None


def _read_all(paths: list[Path], stage: str, bars: _Bars) -> list[Any]:
    from engine.images import read_image

    images = []
    for i, path in enumerate(paths, 1):
        images.append(read_image(str(path)))
        bars(stage, i, len(paths))
    return images


def cmd_train(args: argparse.Namespace) -> int:
    settings = load_settings()
    store = ModelStore(settings)
    ref = store.ref(args.recipe, args.role, args.roi, args.model_key)  # bad ids fail here
    locked = store.check_mm_per_px(ref.recipe_id, args.mm_per_px)  # and a 409 before training
    mm = args.mm_per_px if args.mm_per_px is not None else locked
    ok_paths = _image_paths(args.ok)
    ng_paths = _image_paths(args.ng) if args.ng is not None else []

    from engine import Engine

    bars = _Bars(enabled=not args.no_progress)
    try:
        ok_images = _read_all(ok_paths, "read ok", bars)
        ng_images = _read_all(ng_paths, "read ng", bars)
        engine = Engine.from_settings(settings)
        fit = engine.fit(ok_images, mm_per_px=mm, progress=bars)
        model = fit.model
        if ng_images:
            bars("calibrate", 0, 2)
            # the training images scored without their own patches (leave-one-out)
            ok_scores = (
                fit.ok_scores if fit.ok_scores.size else engine.image_scores(model, ok_images)
            )
            bars("calibrate", 1, 2)
            ng_scores = engine.image_scores(model, ng_images)
            model.calibration = engine.calibrate(model, ok_scores.tolist(), ng_scores.tolist())
            bars("calibrate", 2, 2)
    finally:
        bars.close()
    saved = store.save_model(ref.recipe_id, ref.role_id, ref.roi_id, model, ref.model_key)
    result = {
        "recipe_id": ref.recipe_id,
        "role_id": ref.role_id,
        "roi_id": ref.roi_id,
        "model_key": ref.model_key,
        "version": saved.version,
        "revision": saved.revision,
        "threshold": model.threshold,
        "mm_per_px": saved.mm_per_px,
        "n_ok": len(ok_images),
        "n_ng": len(ng_images),
        "path": str(ref.directory),
    }
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        for key, value in result.items():
            print(f"{key:10} {value}")
    return 0


COLUMNS = (
    "recipe_id",
    "role_id",
    "roi_id",
    "model_key",
    "version",
    "threshold",
    "ok",
    "ng",
    "ready",
    "source",
)


def _row(recipe: dict[str, Any], entry: dict[str, Any]) -> list[str]:
    threshold = entry["threshold"]
    values = {
        **entry,
        "recipe_id": recipe["recipe_id"],
        "threshold": "-" if threshold is None else f"{threshold:.4g}",
        "ok": entry["dataset"].get("ok", 0),
        "ng": entry["dataset"].get("ng", 0),
        "ready": "yes" if entry["ready"] else "no",
    }
    return ["-" if values[c] is None else str(values[c]) for c in COLUMNS]


def format_table(manifest: dict[str, Any]) -> str:
    rows = [list(COLUMNS)]
    for recipe in manifest["recipes"]:
        rows += [_row(recipe, entry) for entry in recipe["models"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    legacy = manifest.get("legacy", {}).get("models", [])
    if legacy:
        lines.append("")
        lines.append("legacy model files (read as a fallback for any recipe):")
        lines += [f"  {item['path']}  ({item['source']})" for item in legacy]
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    store = ModelStore(load_settings())
    manifest = store.manifest(args.recipe)
    if args.json:
        print(orjson.dumps(manifest, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_table(manifest))
    return 0
