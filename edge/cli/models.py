"""``bdi train`` and ``bdi models``: train into the model store, list what it holds, list
each model's stored revisions and roll back to one of them.

Store errors subclass ``ValueError`` and engine errors ``EngineError``, so ``bdi``'s main
reports both as ``bdi: error: ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from configs.settings import load_settings
from store import ModelRef, ModelStore, Revision

TRAIN_EXTS = (".png", ".jpg", ".jpeg")  # what the engine's decoder reads


def add_model_ids(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--recipe --role --roi --model-key``: the ids naming one stored model."""
    where = "" if required else " (filters the listing)"
    parser.add_argument("--recipe", required=required, help=f"recipe id (case-insensitive){where}")
    parser.add_argument("--role", required=required, help=f"role id{where}")
    parser.add_argument("--roi", required=required, help=f"ROI id{where}")
    parser.add_argument("--model-key", default=None, help="model folder (default: the ROI id)")


def add_store_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    train = sub.add_parser("train", help="train (and calibrate with NG images) into the store")
    add_model_ids(train)
    train.add_argument("--ok", required=True, type=Path, help="folder of OK images")
    train.add_argument("--ng", type=Path, default=None, help="folder of NG images (calibrate)")
    train.add_argument("--mm-per-px", type=float, default=None, help="scale, locked per recipe")
    train.add_argument(
        "--target-frr", type=_rate, default=None, metavar="A",
        help="false-reject rate the conformal threshold guarantees (default BDI_TARGET_FRR)",
    )  # fmt: skip
    train.add_argument(
        "--append", action="store_true",
        help="add the OK images to the stored model's memory bank (a new version, no refit)",
    )  # fmt: skip
    train.add_argument("--json", action="store_true", help="print the result as one JSON line")
    train.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser(
        "models", help="list the stored models, their revisions, or roll one back"
    )
    add_model_ids(models, required=False)
    what = models.add_mutually_exclusive_group()
    what.add_argument(
        "--revisions", action="store_true", help="list every stored revision of each model"
    )
    what.add_argument(
        "--rollback",
        metavar="REVISION",
        default=None,
        help="make a stored revision current again (needs --recipe, --role and --roi)",
    )
    models.add_argument("--json", action="store_true", help="print JSON")
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


def _rate(text: str) -> float:
    """``--target-frr``: a rate strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1 (exclusive): {text}")
    return value


def cmd_train(args: argparse.Namespace) -> int:
    if args.append and (args.ng is not None or args.target_frr is not None):
        raise ValueError(
            "--append keeps the stored model's threshold target: no --ng or --target-frr "
            "(calibrate with POST /calibrate_ng or /calibrate_dataset)"
        )
    settings = load_settings()
    store = ModelStore(settings)
    ref = store.ref(args.recipe, args.role, args.roi, args.model_key)  # bad ids fail here
    locked = store.check_mm_per_px(ref.recipe_id, args.mm_per_px)  # and a 409 before training
    mm = args.mm_per_px if args.mm_per_px is not None else locked
    previous = store.load_model(ref) if args.append else None  # none stored: an error
    ok_paths = _image_paths(args.ok)
    ng_paths = _image_paths(args.ng) if args.ng is not None else []

    from edge.api import fitting
    from engine import Engine

    bars = _Bars(enabled=not args.no_progress)
    try:
        engine = Engine.from_settings(settings)
        if previous is not None:  # refused before the images are read
            fitting.check_append(store, engine, ref, previous, args.mm_per_px)
        ok_images = _read_all(ok_paths, "read ok", bars)
        ng_images = _read_all(ng_paths, "read ng", bars)
        if previous is not None:
            fit = engine.append(previous, ok_images, progress=bars)
        else:
            fit = engine.fit(ok_images, mm_per_px=mm, progress=bars, target_frr=args.target_frr)
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
    saved = fitting.save(store, ref, model, previous)
    result = {
        **ref.ids(),
        "version": saved.version,
        "revision": saved.revision,
        "threshold": model.threshold,
        "mm_per_px": saved.mm_per_px,
        "n_ok": len(ok_images),
        "n_ng": len(ng_images),
        "path": str(ref.directory),
        **fitting.cli_summary(fit, settings.calibration_share, previous),
    }
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        for key, value in result.items():
            if key != "warnings":
                print(f"{key:10} {value}")
    for warning in result["warnings"]:
        print(f"bdi: warning: {warning}", file=sys.stderr)
    return 0


COLUMNS = (
    "recipe_id",
    "role_id",
    "roi_id",
    "model_key",
    "version",
    "threshold",
    "method",
    "frr",
    "ok",
    "ng",
    "ready",
    "source",
)
REVISION_COLUMNS = (
    "recipe_id",
    "role_id",
    "roi_id",
    "revision",
    "version",
    "threshold",
    "calibrated",
    "saved_at",
    "current",
)


def _threshold(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _frr(entry: dict[str, Any]) -> str | None:
    """A conformal threshold's false-reject rate: ``<=0.05``, or ``0.05(unguaranteed)``
    when too few held-out OK images back it (docs/THRESHOLDS.md)."""
    alpha = entry.get("target_frr")
    if entry.get("threshold_method") != "conformal" or alpha is None:
        return None
    return f"<={alpha:g}" if entry.get("frr_guaranteed") else f"{alpha:g}(unguaranteed)"


def _table(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> list[str]:
    """Aligned text columns; ``None`` shows as ``-``."""
    cells = [list(columns)] + [["-" if r[c] is None else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def _row(recipe: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    return {
        **entry,
        "recipe_id": recipe["recipe_id"],
        "threshold": _threshold(entry["threshold"]),
        "method": entry.get("threshold_method"),
        "frr": _frr(entry),
        "ok": entry["dataset"].get("ok", 0),
        "ng": entry["dataset"].get("ng", 0),
        "ready": "yes" if entry["ready"] else "no",
    }


def format_table(manifest: dict[str, Any]) -> str:
    rows = [_row(recipe, entry) for recipe in manifest["recipes"] for entry in recipe["models"]]
    lines = _table(COLUMNS, rows)
    legacy = manifest.get("legacy", {}).get("models", [])
    if legacy:
        lines.append("")
        lines.append("legacy model files (read as a fallback for any recipe):")
        lines += [f"  {item['path']}  ({item['source']})" for item in legacy]
    return "\n".join(lines)


def saved_at(seconds: float | None) -> str | None:
    """A revision's save time for people: UTC, to the second."""
    return None if seconds is None else f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%d %H:%M:%SZ}"


def _revision_row(ref: ModelRef, item: Revision) -> dict[str, Any]:
    return {
        **ref.ids(),
        "revision": item.revision,
        "version": item.version,
        "threshold": _threshold(item.threshold),
        "calibrated": "yes" if item.calibrated else "no",
        "saved_at": saved_at(item.saved_at),
        "current": "current" if item.current else "",
    }


def _selected(store: ModelStore, args: argparse.Namespace) -> list[ModelRef]:
    """The models ``--recipe/--role/--roi/--model-key`` name: one when role and ROI are
    given, else every stored model that matches what is given."""
    if args.role is not None and args.roi is not None:
        return [store.ref(args.recipe, args.role, args.roi, args.model_key)]
    given = {"role_id": args.role, "roi_id": args.roi, "model_key": args.model_key}
    return [
        store.ref(recipe["recipe_id"], m["role_id"], m["roi_id"], m["model_key"])
        for recipe in store.manifest(args.recipe)["recipes"]
        for m in recipe["models"]
        if all(value is None or m[key] == value for key, value in given.items())
    ]


def _print_revisions(store: ModelStore, refs: list[ModelRef], as_json: bool) -> None:
    listed = [(ref, store.revisions(ref)) for ref in refs]
    if as_json:
        out = [{**ref.ids(), "revisions": [r.to_dict() for r in items]} for ref, items in listed]
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    rows = [_revision_row(ref, item) for ref, items in listed for item in items]
    print("\n".join(_table(REVISION_COLUMNS, rows)))


def _rollback(store: ModelStore, args: argparse.Namespace) -> None:
    if args.recipe is None or args.role is None or args.roi is None:
        raise ValueError("--rollback needs --recipe, --role and --roi")
    ref = store.ref(args.recipe, args.role, args.roi, args.model_key)
    was = next((r.revision for r in store.revisions(ref) if r.current), None)
    saved = store.rollback(ref, args.rollback)
    if not args.json:
        print(f"rolled back to revision {saved.revision} (version {saved.version}); was {was}")
    _print_revisions(store, [ref], args.json)


def cmd_models(args: argparse.Namespace) -> int:
    store = ModelStore(load_settings())
    if args.rollback is not None:
        _rollback(store, args)
    elif args.revisions:
        _print_revisions(store, _selected(store, args), args.json)
    elif args.json:
        print(orjson.dumps(store.manifest(args.recipe), option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_table(store.manifest(args.recipe)))
    return 0
