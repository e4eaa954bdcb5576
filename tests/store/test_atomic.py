"""Atomic file primitives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from store import atomic


def test_write_bytes_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic.write_json(target, {"a": 1})
    atomic.write_json(target, {"a": 2})
    assert atomic.read_json(target) == {"a": 2}
    assert os.listdir(tmp_path) == ["f.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.bin"
    atomic.write_bytes(target, b"old")

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_temp_names_are_hidden_and_swept(tmp_path: Path) -> None:
    tmp = atomic.temp_path(tmp_path / "model.npz")
    assert tmp.name.startswith(".") and atomic.is_temp(tmp.name)
    tmp.write_bytes(b"x")
    atomic.new_temp_dir(tmp_path, "rev")
    (tmp_path / "keep.npz").write_bytes(b"y")
    assert atomic.sweep(tmp_path) == 2
    assert os.listdir(tmp_path) == ["keep.npz"]
    assert atomic.sweep(tmp_path / "missing") == 0


def test_publish_and_remove_tree(tmp_path: Path) -> None:
    tmp = atomic.new_temp_dir(tmp_path, "v1")
    atomic.write_file_into(tmp, "a", b"1")
    atomic.publish_dir(tmp, tmp_path / "v1")
    assert (tmp_path / "v1" / "a").read_bytes() == b"1"
    atomic.remove_tree(tmp_path / "v1")
    assert os.listdir(tmp_path) == []


def test_link_or_copy_is_atomic_replace(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    atomic.link_or_copy(src, dst)
    assert dst.read_bytes() == b"new" and os.stat(dst).st_ino == os.stat(src).st_ino


def test_ensure_dir_creates_parents(tmp_path: Path) -> None:
    atomic.ensure_dir(tmp_path / "a" / "b" / "c")
    atomic.ensure_dir(tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b" / "c").is_dir()
