"""Naming rules, as properties: round-trips, case-insensitivity, reserved ids, and no
client string ever producing a path outside the store's root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from store import InvalidIdError, ModelStore, naming

PROPS = hsettings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

recipe_like = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}", fullmatch=True).filter(
    lambda s: s.lower() != "last"
)
valid_part = st.text(min_size=1, max_size=40).filter(lambda s: _valid_part(s))
TRAVERSAL = [
    "..",
    "../..",
    "../../etc/passwd",
    "/",
    "/etc/passwd",
    "%2e%2e",
    "%2e%2e%2f",
    "..%2f..%2f",
    "a/../../b",
    "\x00",
    "a\x00b",
    "..\\..\\",
    ".",
    "...",
    "~",
    "C:\\Windows",
    "recipes/../..",
    "//server/share",
    "\u2024\u2024",
    "．．",
]
hostile = st.one_of(
    st.sampled_from(TRAVERSAL),
    st.text(max_size=30),
    st.builds(lambda a, b: a + b, st.sampled_from(TRAVERSAL), st.text(max_size=8)),
)


def _valid_part(s: str) -> bool:
    try:
        naming.part_id(s)
    except InvalidIdError:
        return False
    return True


@PROPS
@given(recipe_like)
def test_recipe_id_is_lower_case_and_case_insensitive(value: str) -> None:
    rid = naming.recipe_id(value)
    assert rid == value.lower()
    assert naming.recipe_id(value.upper()) == naming.recipe_id(value.swapcase()) == rid
    assert naming.recipe_id(rid) == rid  # idempotent
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", rid)


@PROPS
@given(st.text(max_size=80))
@example("Disc-A\n")  # "$" in a regex would accept the trailing newline
@example("\u212a")  # KELVIN SIGN lower-cases to ASCII "k"
@example("a" * 65)
@example("-abc")
def test_recipe_id_accepts_exactly_the_pattern(value: str) -> None:
    ok = value == "" or (
        value.isascii()
        and re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", value.lower()) is not None
        and value.lower() != "last"
    )
    if ok:
        naming.recipe_id(value)
    else:
        with pytest.raises(InvalidIdError):
            naming.recipe_id(value)


@pytest.mark.parametrize("value", ["last", "LAST", "Last", "lAsT"])
def test_last_is_reserved_in_any_case(value: str) -> None:
    with pytest.raises(InvalidIdError, match="reserved"):
        naming.recipe_id(value)


def test_missing_recipe_is_the_default_one() -> None:
    assert naming.recipe_id(None) == naming.recipe_id("") == "default"


@PROPS
@given(valid_part, valid_part)
@example("?>?", "a")  # encodes to "Pz4_": a trailing "_" next to the "__" separator
@example("a", "b__c")
def test_base_name_round_trips_and_is_file_system_safe(role: str, roi: str) -> None:
    name = naming.base_name(role, roi)
    assert naming.parse_base_name(name) == (role, roi)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", name)
    assert len(name) <= 174


@PROPS
@given(valid_part, valid_part, valid_part, valid_part)
def test_base_name_is_injective(r1: str, s1: str, r2: str, s2: str) -> None:
    if (r1, s1) != (r2, s2):
        assert naming.base_name(r1, s1) != naming.base_name(r2, s2)


def test_base_name_matches_the_original_backend() -> None:
    # urlsafe base64 without padding, joined by "__"
    assert naming.base_name("Master1", "inspection-1") == "TWFzdGVyMQ__aW5zcGVjdGlvbi0x"


@pytest.mark.parametrize("bad", ["", "a\x00b", "x\n", "\ud800", "é" * 33])
def test_part_id_rejects(bad: str) -> None:
    with pytest.raises(InvalidIdError):
        naming.part_id(bad)


@pytest.mark.parametrize("bad", ["nope", "__", "TWFzdGVyMQ", "TWFzdGVyMR__aQ", "!!__aQ"])
def test_parse_base_name_rejects_non_canonical(bad: str) -> None:
    with pytest.raises(InvalidIdError):
        naming.parse_base_name(bad)


@PROPS
@given(st.one_of(st.none(), hostile), valid_part)
def test_model_key_is_one_safe_visible_component(value: str | None, roi: str) -> None:
    key = naming.model_key(value, roi)
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,80}", key)
    assert key not in (".", "..") and key.lower() not in naming.RESERVED_KEYS
    assert naming.model_key(key, roi) == key  # idempotent: a listed folder maps to itself


def test_model_key_defaults_to_the_roi() -> None:
    assert naming.model_key(None, "inspection-1") == "inspection-1"
    assert naming.model_key(None, "ROI 1/2") == "ROI_1_2"
    assert naming.model_key("datasets", "x") == "datasets_"


def _under(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


@PROPS
@given(hostile, hostile, hostile, st.one_of(st.none(), hostile))
def test_no_id_leaves_the_root(
    tmp_path: Path, recipe: str, role: str, roi: str, key: str | None
) -> None:
    store = ModelStore(root=tmp_path / "models")
    try:
        ref = store.ref(recipe, role, roi, key)
    except InvalidIdError:
        return
    assert _under(ref.directory, store.root)
    assert _under(store.datasets.folder(ref), store.root)
    for path in store._candidates(ref):  # legacy look-ups too
        assert _under(path, store.root)
    for lab in naming.LABELS:
        for folder, _ in store.datasets._folders(ref, lab):
            assert _under(folder, store.root)


@PROPS
@given(hostile)
@example("../../../etc/passwd.png")
@example("/etc/x.png")
@example("..png")
def test_image_names_never_leave_the_dataset(tmp_path: Path, name: str) -> None:
    store = ModelStore(root=tmp_path / "models")
    try:
        valid = naming.image_name(name)
    except InvalidIdError:
        with pytest.raises(InvalidIdError):
            store.datasets.read(store.ref("r", "role", "roi"), "ok", name)
        return
    folder = store.datasets.folder(store.ref("r", "role", "roi")) / "ok"
    assert (folder / valid).parent == folder


def test_traversal_ids_are_stored_inside_the_root(tmp_path: Path) -> None:
    import numpy as np

    store = ModelStore(root=tmp_path / "models")
    item = store.datasets.add(
        store.ref("r", "../..", "/etc/passwd"), "ok", np.zeros((4, 4, 3), np.uint8)
    )
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and all(_under(p, store.root) for p in files)
    assert (
        store.datasets.list_images(store.ref("r", "../..", "/etc/passwd"))["ok"][0].name
        == item.name
    )


@PROPS
@given(st.text(min_size=1, max_size=40))
def test_legacy_sanitising_gives_one_component(value: str) -> None:
    out = naming.legacy_sanitize(value)
    assert out and "/" not in out and "." not in out and "\x00" not in out
