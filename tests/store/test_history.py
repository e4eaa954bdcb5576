"""Model history: every stored revision listed with what it is, and rolling back to one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from store import CorruptModelError, ModelRef, ModelStore, NotFoundError, atomic, models, retention
from tests.helpers.store import Trained, recalibrated, tiny_settings

ROLE, ROI = "Master1", "inspection-1"


def _history(store: ModelStore, first: Trained, second: Trained) -> tuple[str, str]:
    ref = store.ref("disc-a", ROLE, ROI)
    a = store.save_model(ref, first.model).revision
    b = store.save_model(ref, second.model).revision
    return a, b


def test_no_model_no_revisions(store: ModelStore) -> None:
    assert store.revisions(store.ref("r", ROLE, ROI)) == []


def test_revisions_say_what_each_one_is(store: ModelStore, model_a: Trained, engine) -> None:
    """A recalibration keeps the version: only the threshold and the calibration tell the
    two revisions apart, so both are listed with them."""
    ref = store.ref("Disc-A", ROLE, ROI)
    before = time.time()
    trained = store.save_model(ref, model_a.model)
    calibration = engine.calibrate(model_a.model, [1.0, 2.0, 3.0], [10.0, 12.0])
    calibrated = store.save_calibration(ref, calibration)
    current, previous = store.revisions(ref)
    assert (current.revision, previous.revision) == (calibrated.revision, trained.revision)
    assert current.current and not previous.current
    assert current.version == previous.version == model_a.version
    assert current.threshold == pytest.approx(calibration.threshold)
    assert previous.threshold == pytest.approx(model_a.model.threshold)
    assert (current.calibration, current.calibrated) == ("ok_ng", True)
    assert (previous.calibration, previous.calibrated) == ("conformal", False)
    assert before <= previous.saved_at <= current.saved_at <= time.time()
    assert current.to_dict()["calibrated"] is True


def test_rollback_makes_a_revision_current_again(
    store: ModelStore, model_a: Trained, model_b: Trained
) -> None:
    ref = store.ref("disc-a", ROLE, ROI)
    a, b = _history(store, model_a, model_b)
    saved_at = {r.revision: r.saved_at for r in store.revisions(ref)}
    assert store.load_model(ref).version == model_b.version  # cached from here on
    rolled = store.rollback(ref, a)
    assert (rolled.revision, rolled.version) == (a, model_a.version)
    assert store.load_model(ref).version == model_a.version  # the cache saw the change
    assert store.state(ref).revision == a
    listed = store.revisions(ref)
    assert [(r.revision, r.current) for r in listed] == [(a, True), (b, False)]
    assert {r.revision: r.saved_at for r in listed} == saved_at  # first-saved times kept
    pointer = models.read_pointer(ref.directory, ref.base_name)
    assert pointer is not None and pointer["previous"] == b
    store.rollback(ref, b)  # and forth again
    assert store.state(ref).revision == b


def test_rollback_to_the_other_threshold_of_one_version(
    store: ModelStore, model_a: Trained
) -> None:
    ref = store.ref("r", ROLE, ROI)
    low = store.save_model(ref, recalibrated(model_a, 38.93).model)
    store.save_model(ref, recalibrated(model_a, 43.03).model)
    store.rollback(ref, low.revision)
    assert store.state(ref).threshold == pytest.approx(38.93)
    assert store.load_model(ref).threshold == pytest.approx(38.93)


@pytest.mark.parametrize("revision", ["0" * 16, "../../etc", "", ".versions"])
def test_unknown_revisions_are_not_found(
    store: ModelStore, model_a: Trained, model_b: Trained, revision: str
) -> None:
    ref = store.ref("disc-a", ROLE, ROI)
    _, b = _history(store, model_a, model_b)
    with pytest.raises(NotFoundError, match="no revision"):
        store.rollback(ref, revision)
    assert store.state(ref).revision == b


def test_a_damaged_revision_is_refused(
    store: ModelStore, model_a: Trained, model_b: Trained
) -> None:
    ref = store.ref("disc-a", ROLE, ROI)
    a, b = _history(store, model_a, model_b)
    index = models.revision_files(ref.directory, ref.base_name, a)[models.INDEX]
    data = bytearray(index.read_bytes())
    data[-1] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(CorruptModelError):
        store.rollback(ref, a)
    assert store.state(ref).revision == b


def test_revisions_of_a_pointer_without_history(
    store: ModelStore, model_a: Trained, model_b: Trained
) -> None:
    """Version records written before revisions were listed carry no history."""
    ref = store.ref("disc-a", ROLE, ROI)
    a, b = _history(store, model_a, model_b)
    path = models.pointer_path(ref.directory, ref.base_name)
    pointer = models.read_pointer(ref.directory, ref.base_name)
    assert pointer is not None
    del pointer["history"]
    atomic.write_json(path, pointer)
    versions = {r.revision: r.version for r in store.revisions(ref)}
    assert versions == {a: model_a.version, b: model_b.version}
    store.rollback(ref, a)
    assert store.state(ref).version == model_a.version


# --- how many revisions are kept (BDI_MODEL_REVISIONS_KEPT) -----------------------------------
def _folders(ref: ModelRef) -> set[str]:
    return {p.name for p in models.versions_dir(ref.directory, ref.base_name).iterdir()}


def _recorded(ref: ModelRef) -> set[str]:
    pointer = models.read_pointer(ref.directory, ref.base_name)
    assert pointer is not None
    return set(pointer["history"])


def _five(model_a: Trained, model_b: Trained) -> list[Trained]:
    """Five revisions: two models, each trained then recalibrated, then one more threshold."""
    return [
        model_a,
        recalibrated(model_a, 30.0),
        model_b,
        recalibrated(model_b, 40.0),
        recalibrated(model_a, 50.0),
    ]


def test_five_saves_with_limit_three_keep_the_newest_three(
    root: Path, model_a: Trained, model_b: Trained
) -> None:
    store = ModelStore(tiny_settings(root, model_revisions_kept=3))
    ref = store.ref("disc-a", ROLE, ROI)
    revs = [store.save_model(ref, t.model).revision for t in _five(model_a, model_b)]
    assert len(set(revs)) == 5
    listed = store.revisions(ref)
    assert [(r.revision, r.current) for r in listed] == [
        (revs[4], True),
        (revs[3], False),
        (revs[2], False),
    ]
    assert _folders(ref) == _recorded(ref) == set(revs[2:])
    assert listed[0].saved_at > listed[1].saved_at > listed[2].saved_at

    store.rollback(ref, revs[2])  # the oldest kept
    assert store.state(ref).revision == revs[2]
    assert store.load_model(ref).version == model_b.version
    assert store.load_model(ref).threshold == pytest.approx(model_b.model.threshold)
    assert [r.revision for r in store.revisions(ref)] == [revs[2], revs[4], revs[3]]
    assert _folders(ref) == set(revs[2:])

    # the next save drops the oldest by save time, revs[2], except that it is now the
    # previous revision: revs[3] goes instead
    sixth = store.save_model(ref, recalibrated(model_b, 60.0).model).revision
    listed = store.revisions(ref)
    assert [r.revision for r in listed] == [sixth, revs[4], revs[2]]
    assert _folders(ref) == _recorded(ref) == {sixth, revs[4], revs[2]}
    pointer = models.read_pointer(ref.directory, ref.base_name)
    assert pointer is not None and pointer["previous"] == revs[2]
    store.rollback(ref, revs[2])
    assert store.load_model(ref).threshold == pytest.approx(model_b.model.threshold)


def test_the_default_keeps_five_revisions(root: Path, model_a: Trained, model_b: Trained) -> None:
    from configs.settings import Settings

    assert Settings.model_fields["model_revisions_kept"].default == retention.REVISIONS_KEPT
    store = ModelStore(root=root)
    assert store.revisions_kept == retention.REVISIONS_KEPT == 5
    ref = store.ref("r", ROLE, ROI)
    revs = [store.save_model(ref, t.model).revision for t in _five(model_a, model_b)]
    assert _folders(ref) == set(revs)  # train → calibrate → recalibrate: all kept
    sixth = store.save_model(ref, recalibrated(model_b, 60.0).model).revision
    assert _folders(ref) == _recorded(ref) == {*revs[1:], sixth}


def test_fewer_than_two_revisions_is_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="at least 2 revisions"):
        ModelStore(root=root, revisions_kept=1)


def test_the_limit_comes_from_the_settings(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from configs.settings import load_settings

    monkeypatch.setenv("BDI_MODEL_REVISIONS_KEPT", "3")
    monkeypatch.setenv("BDI_MODELS_DIR", str(root))
    assert ModelStore(load_settings()).revisions_kept == 3
    assert ModelStore(load_settings(), revisions_kept=4).revisions_kept == 4


def test_the_revision_a_reader_located_survives_the_next_write(
    root: Path, model_a: Trained, model_b: Trained, make_trained
) -> None:
    """At the minimum of two, a reader that read the pointer before a write still finds
    its files (the previous revision); after two writes it reads the pointer again."""
    store = ModelStore(root=root, revisions_kept=2)
    ref = store.ref("r", ROLE, ROI)
    store.save_model(ref, model_a.model)
    located = store.locate(ref)
    assert located is not None
    store.save_model(ref, model_b.model)
    assert all(p.read_bytes() == model_a.files[s] for s, p in located.files.items())
    store.save_model(ref, make_trained(3).model)
    assert not any(p.exists() for p in located.files.values())
    assert store.load_model(ref).version == make_trained(3).version


def test_revisions_without_a_recorded_time_go_by_their_folder_time(
    root: Path, model_a: Trained, model_b: Trained
) -> None:
    """A pointer without a history (written before it kept one) still ages its revisions:
    by the folders' times, as the listing shows them."""
    ref = ModelStore(root=root).ref("r", ROLE, ROI)
    five = _five(model_a, model_b)
    revs = [ModelStore(root=root).save_model(ref, t.model).revision for t in five[:4]]
    pointer = models.read_pointer(ref.directory, ref.base_name)
    assert pointer is not None
    del pointer["history"]
    atomic.write_json(models.pointer_path(ref.directory, ref.base_name), pointer)
    vroot = models.versions_dir(ref.directory, ref.base_name)
    for rev, mtime in zip(revs[:3], (3000.0, 1000.0, 2000.0), strict=True):
        os.utime(vroot / rev, (mtime, mtime))
    listed = [r.revision for r in ModelStore(root=root).revisions(ref)]
    assert listed == [revs[3], revs[0], revs[2], revs[1]]

    store = ModelStore(root=root, revisions_kept=3)
    fifth = store.save_model(ref, five[4].model).revision
    listed = store.revisions(ref)
    assert [r.revision for r in listed] == [fifth, revs[3], revs[0]]
    assert listed[2].saved_at == 3000.0 and listed[2].version == model_a.version
    assert _folders(ref) == {fifth, revs[3], revs[0]}
    store.rollback(ref, revs[0])
    assert store.state(ref).revision == revs[0]


def test_a_failed_clean_up_keeps_the_save_and_the_next_save_finishes_it(
    root: Path, model_a: Trained, model_b: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(root=root, revisions_kept=3)
    ref = store.ref("r", ROLE, ROI)
    five = _five(model_a, model_b)
    revs = [store.save_model(ref, t.model).revision for t in five[:3]]

    def disk_error(path: Path) -> None:
        raise OSError(5, "Input/output error", str(path))

    with monkeypatch.context() as m:
        m.setattr(atomic, "remove_tree", disk_error)
        revs.append(store.save_model(ref, five[3].model).revision)
    assert store.state(ref).revision == revs[3]  # saved: past the commit point
    assert _folders(ref) == set(revs)  # the oldest could not be removed
    assert _recorded(ref) == set(revs[1:])
    assert [r.revision for r in store.revisions(ref)] == revs[::-1]  # listed all the same
    revs.append(store.save_model(ref, five[4].model).revision)
    assert _folders(ref) == _recorded(ref) == set(revs[2:])


def test_history_records_keep_their_format(store: ModelStore, model_a: Trained) -> None:
    """``{revision: {version, saved_at}}``, as pointers have always held it."""
    ref = store.ref("r", ROLE, ROI)
    for threshold in (10.0, 20.0, 30.0):
        store.save_model(ref, recalibrated(model_a, threshold).model)
    pointer = models.read_pointer(ref.directory, ref.base_name)
    assert pointer is not None and len(pointer["history"]) == 3
    for record in pointer["history"].values():
        assert set(record) == {"version", "saved_at"}
        assert record["version"] == model_a.version and isinstance(record["saved_at"], float)
