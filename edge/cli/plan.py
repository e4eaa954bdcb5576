"""``bdi plan``: a recipe's inspection plan in the local store (``BDI_MODELS_DIR``): show it
(or a stored version of it), set it from a JSON file or from ``--roi`` options, list its
versions. Output is JSON; store errors are ``ValueError``s, which ``bdi``'s main reports as
``bdi: error: ...`` (exit status 2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from configs.settings import load_settings
from store import InvalidPlanError, ModelStore, StoredPlan, plans

# what `bdi plan show` prints besides the plan itself: accepted (and ignored) by --file
_SHOWN = ("recipe_id", "version", "created_at", "current", "warnings")


def add_plan_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    plan = sub.add_parser("plan", help="show or set a recipe's inspection plan (frames per part)")
    what = plan.add_subparsers(dest="plan_command", required=True, metavar="ACTION")

    show = what.add_parser("show", help="print the recipe's plan (or a stored version) as JSON")
    show.add_argument("recipe", help="recipe id (case-insensitive)")
    show.add_argument("--version", default=None, help="a stored version (default: the current)")
    show.set_defaults(func=cmd_show)

    put = what.add_parser(
        "set",
        help="store the recipe's plan from --file or --roi options",
        epilog="ROLE/ROI splits at the first '/'; ids containing '/' need --file.",
    )
    put.add_argument("recipe", help="recipe id (case-insensitive)")
    source = put.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--file",
        type=Path,
        default=None,
        help='JSON {"rois": [{"role_id", "roi_id", "required"}], "deadline_ms"} ("-": stdin); '
        "the output of `bdi plan show` is accepted",
    )
    source.add_argument(
        "--roi",
        action="append",
        metavar="ROLE/ROI[:optional]",
        help="one frame of a part, repeated; ':optional' for a frame the part may lack",
    )
    put.add_argument(
        "--deadline-ms",
        type=int,
        default=None,
        help="ms after a part's first frame by which its frames are due "
        f"(default: the file's, else {plans.DEFAULT_DEADLINE_MS})",
    )
    put.set_defaults(func=cmd_set)

    history = what.add_parser("history", help="every stored version of the recipe's plan")
    history.add_argument("recipe", help="recipe id (case-insensitive)")
    history.set_defaults(func=cmd_history)


def parse_roi(text: str) -> plans.PlanRoi:
    """``ROLE/ROI`` or ``ROLE/ROI:optional`` (``:required`` is the default, also accepted)."""
    body, required = text, True
    for suffix, value in ((":optional", False), (":required", True)):
        if text.endswith(suffix):
            body, required = text[: -len(suffix)], value
            break
    role, sep, roi = body.partition("/")
    if not sep or not role or not roi:
        raise InvalidPlanError(f"--roi {text!r}: expected ROLE/ROI or ROLE/ROI:optional")
    return plans.PlanRoi(role, roi, required)


def _read_file(path: Path) -> Any:
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        raise InvalidPlanError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidPlanError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in _SHOWN}
    return data


def _print(store: ModelStore, stored: StoredPlan) -> None:
    warnings = [w.to_dict() for w in store.plan_warnings(stored.plan)]
    print(
        orjson.dumps(
            {**stored.to_dict(), "warnings": warnings}, option=orjson.OPT_INDENT_2
        ).decode()
    )


def cmd_show(args: argparse.Namespace) -> int:
    store = ModelStore(load_settings())
    _print(store, store.stored_plan(args.recipe, args.version))
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    store = ModelStore(load_settings())
    if args.file is not None:
        plan = plans.plan_from_json(args.recipe, _read_file(args.file))
        rois, deadline = list(plan.rois), plan.deadline_ms
    else:
        rois, deadline = [parse_roi(text) for text in args.roi], plans.DEFAULT_DEADLINE_MS
    if args.deadline_ms is not None:
        deadline = args.deadline_ms
    stored = store.save_plan(args.recipe, rois, deadline)
    for warning in store.plan_warnings(stored.plan):
        print(f"bdi: warning: {warning.detail}", file=sys.stderr)
    _print(store, stored)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    store = ModelStore(load_settings())
    out = [s.to_dict() for s in store.plan_versions(args.recipe)]
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0
