"""Crash-safe file operations: temp in the destination folder, fsync, rename, fsync folder.

Temp names start with ``.`` and end with ``.tmp``; :func:`sweep` removes the ones a killed
writer left behind (callers hold the recipe lock, so no live writer owns them).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

TMP_SUFFIX = ".tmp"


def temp_path(final: Path) -> Path:
    """A hidden sibling of ``final`` that no other writer picks."""
    return final.parent / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"


def is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """``mkdir -p`` that also fsyncs the parent of every folder it creates."""
    if path.is_dir():
        return
    ensure_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
        fsync_dir(path.parent)


def _write_synced(path: Path, data: bytes, private: bool = False) -> None:
    """A new file (never an existing one), its bytes on disk; 0600 if ``private``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                 0o600 if private else 0o666)  # fmt: skip
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """A new file to write, that replaces ``path`` atomically when the block ends without
    an exception (temp beside it, fsync, rename, fsync the folder); else it is removed."""
    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes, sync_dir: bool = True, private: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old or the new file
    (``private``: readable by its owner only)."""
    tmp = temp_path(path)
    try:
        _write_synced(tmp, data, private)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if sync_dir:
        fsync_dir(path.parent)


def create_once(path: Path, data: bytes, private: bool = False) -> bytes:
    """``path``'s bytes; when there is no such file, ``data`` written there first (atomic,
    and only once: of two processes racing, both end up with the same bytes)."""
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    ensure_dir(path.parent)
    tmp = temp_path(path)
    try:
        _write_synced(tmp, data, private)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # never replaces a file another process made meanwhile
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path.read_bytes()


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, dumps(obj))


def read_json(path: Path) -> Any:
    """The parsed file, or ``None`` when it does not exist. Raises ``ValueError`` if garbled."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return orjson.loads(data)


def write_file_into(directory: Path, name: str, data: bytes) -> None:
    """A new file in a private (not yet published) folder: write + fsync, no rename needed."""
    _write_synced(directory / name, data)


def link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` the same content as ``src`` (hard link; copy where not allowed)."""
    tmp = temp_path(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            _write_synced(tmp, src.read_bytes())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def new_temp_dir(parent: Path, final_name: str) -> Path:
    path = temp_path(parent / final_name)
    path.mkdir()
    return path


def publish_dir(tmp_dir: Path, final: Path) -> None:
    """Give a complete private folder its real name (atomic), then make the rename durable."""
    fsync_dir(tmp_dir)
    os.rename(tmp_dir, final)
    fsync_dir(final.parent)


def remove_tree(path: Path) -> None:
    """Remove a folder so that it disappears at once: rename to a temp name, then delete."""
    if not path.exists():
        return
    tmp = temp_path(path)
    os.rename(path, tmp)
    fsync_dir(path.parent)
    shutil.rmtree(tmp, ignore_errors=True)


def sweep(directory: Path) -> int:
    """Delete temp files / folders left in ``directory`` by killed writers. Returns the count."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not is_temp(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        removed += 1
    return removed
