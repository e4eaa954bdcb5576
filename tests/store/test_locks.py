"""Per-recipe locks exclude threads, other store instances and other processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from store import ModelStore
from store.locks import FileLocks
from tests.helpers.paths import REPO as REPO_ROOT

INCREMENTER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from store import ModelStore

    store, counter = ModelStore(root=Path(sys.argv[1])), Path(sys.argv[2])
    for _ in range(int(sys.argv[3])):
        with store.lock("Disc-A"):
            value = int(counter.read_text())
            counter.write_text(str(value + 1))
    """
)


def _increment(store: ModelStore, counter: Path, n: int) -> None:
    for _ in range(n):
        with store.lock("disc-a"):
            value = int(counter.read_text())
            time.sleep(0)  # invite a thread switch inside the critical section
            counter.write_text(str(value + 1))


def test_threads_processes_and_instances_are_excluded(tmp_path: Path) -> None:
    root, counter = tmp_path / "models", tmp_path / "counter"
    counter.write_text("0")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", INCREMENTER, str(root), str(counter), "150"],
            env=env,
            cwd=REPO_ROOT,
        )
        for _ in range(2)
    ]
    stores = [ModelStore(root=root), ModelStore(root=root)]  # two instances, one process
    threads = [
        threading.Thread(target=_increment, args=(stores[i % 2], counter, 100)) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for child in children:
        assert child.wait(timeout=60) == 0
    assert int(counter.read_text()) == 2 * 150 + 4 * 100


def test_lock_is_reentrant_in_one_thread(tmp_path: Path) -> None:
    locks = FileLocks()
    path = tmp_path / "x" / ".lock"
    with locks.hold(path), locks.hold(path):
        pass
    with locks.hold(path):  # released properly
        pass


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from store import ModelStore

    with ModelStore(root=Path(sys.argv[1])).lock("r"):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_a_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    root = tmp_path / "models"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT
    )
    assert child.stdout is not None and child.stdout.readline() == b"locked\n"
    acquired = threading.Event()

    def take() -> None:
        with ModelStore(root=root).lock("r"):
            acquired.set()

    waiter = threading.Thread(target=take, daemon=True)
    waiter.start()
    assert not acquired.wait(0.3)  # blocked while the child holds it
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert acquired.wait(10)
