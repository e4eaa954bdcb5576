"""Per-recipe write locks that hold across threads *and* processes.

``fcntl.flock`` on ``recipes/<recipe_id>/.lock``: the kernel drops it when its holder dies,
so a killed writer never leaves a recipe locked. Within one process the lock is re-entrant
per thread (a save may check ``mm_per_px`` under the same lock without deadlocking).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from store.atomic import ensure_dir


class _Held:
    __slots__ = ("rlock", "depth", "fd")

    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd = -1


class FileLocks:
    """Exclusive locks named by lock-file path."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[str, _Held] = {}

    @contextmanager
    def hold(self, path: Path) -> Iterator[None]:
        with self._guard:
            held = self._held.setdefault(str(path), _Held())
        with held.rlock:
            if held.depth == 0:
                ensure_dir(path.parent)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                held.fd = fd
            held.depth += 1
            try:
                yield
            finally:
                held.depth -= 1
                if held.depth == 0:
                    fd, held.fd = held.fd, -1
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
