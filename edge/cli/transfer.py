"""``bdi export-model`` and ``bdi import-model``: move a trained model between stores.

The archive format, its validation and installing it live in :mod:`store.archive`; this
module parses arguments and prints. Every failure is a ``ValueError`` subclass (a store
error), which ``bdi``'s main reports as ``bdi: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from configs.settings import load_settings
from edge.cli.models import add_model_ids, saved_at
from store import ArchiveError, ModelStore, Revision, archive

# what import-model prints of an archive's manifest
IMPORT_KEYS = ("recipe_id", "role_id", "roi_id", "model_key", "version", "backbone")


def add_transfer_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    exp = sub.add_parser(
        "export-model", help="write a stored model to a .tar.gz (for import-model elsewhere)"
    )
    add_model_ids(exp)
    which = exp.add_mutually_exclusive_group()
    which.add_argument(
        "--previous", action="store_true", help="the revision current before the current one"
    )
    which.add_argument(
        "--revision", default=None, help="a stored revision (`bdi models --revisions`)"
    )
    exp.add_argument(
        "--out", type=Path, default=None, help="archive file, or a folder for the derived name"
    )
    exp.add_argument("--json", action="store_true", help="print the manifest as one JSON line")
    exp.set_defaults(func=cmd_export)

    imp = sub.add_parser(
        "import-model", help="validate a model archive and store it as the current version"
    )
    imp.add_argument("archive", type=Path, help="a .tar.gz written by export-model")
    imp.add_argument("--dry-run", action="store_true", help="validate only, store nothing")
    imp.add_argument("--json", action="store_true", help="print the result as one JSON line")
    imp.set_defaults(func=cmd_import)


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(orjson.dumps(result).decode())
        return
    for key, value in result.items():
        if key != "files":
            print(f"{key:16} {value}")


def cmd_export(args: argparse.Namespace) -> int:
    store = ModelStore(load_settings())
    ref = store.ref(args.recipe, args.role, args.roi, args.model_key)
    revision = archive.previous_revision(ref) if args.previous else args.revision
    model = archive.collect(store, ref, revision)
    out = args.out if args.out is not None else Path(".")
    if out.is_dir():
        out = out / archive.default_name(model.manifest)
    try:
        archive.write(out, model)
    except OSError as exc:
        raise ArchiveError(f"cannot write {out}: {exc}") from None
    if revision is not None:  # say plainly that this is not the model served now
        _say_which(store.revisions(ref), revision, "previous" if args.previous else "stored")
    _print({**model.manifest, "current": revision is None, "path": str(out)}, args.json)
    return 0


def _say_which(revisions: list[Revision], revision: str, kind: str) -> None:
    line = f"bdi: exported the {kind} revision {revision}, not the current one"
    taken = next((r for r in revisions if r.revision == revision), None)
    if taken is not None:
        calibrated = "calibrated" if taken.calibrated else "not calibrated"
        line += (
            f": version {taken.version}, threshold {taken.threshold}, {calibrated}, "
            f"saved {saved_at(taken.saved_at)}"
        )
    print(line, file=sys.stderr)


def cmd_import(args: argparse.Namespace) -> int:
    model = archive.read(args.archive)
    m = model.manifest
    store = ModelStore(load_settings())
    ref = model.ref(store)
    result = {k: m.get(k) for k in IMPORT_KEYS} | {"threshold": model.threshold}
    if args.dry_run:
        store.check_mm_per_px(ref.recipe_id, m["mm_per_px"])  # a 409 shows in a dry run too
        _print({**result, "revision": m["revision"], "stored": False}, args.json)
        return 0
    saved = archive.install(store, model)
    _print(
        {**result, "revision": saved.revision, "mm_per_px": saved.mm_per_px,
         "path": str(ref.directory), "stored": True},
        args.json,
    )  # fmt: skip
    return 0
