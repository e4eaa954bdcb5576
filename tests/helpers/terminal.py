"""``bdi`` commands run as a terminal runs them: each in its own process group, which a
Ctrl-C reaches as a whole (:meth:`BdiProcess.ctrl_c`), output collected line by line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.helpers.paths import REPO
from tests.helpers.processes import alive


def bdi_env(models_dir: Path, **variables: object) -> dict[str, str]:
    """The environment without the developer's own ``BDI_*``, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
    env["BDI_MODELS_DIR"] = str(models_dir)
    env.update({k: str(v) for k, v in variables.items()})
    return env


def free_run(n: int) -> int:
    """A base port with ``n`` free ports from it (free when checked)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + n <= 65536 and all(_free(p) for p in range(base, base + n)):
            return base
    raise AssertionError(f"no run of {n} free ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class BdiProcess:
    """``python -m edge.cli ARGS`` in its own session; stdout and stderr in ``lines``."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", *args], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.interrupted_at: float | None = None
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = 180) -> re.Match[str]:
        """The first line matching ``pattern``; fails when the process ends without one."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not self._pump.is_alive():
                raise AssertionError(f"{pattern!r} not seen; exited {self.proc.returncode}:\n"
                                     f"{''.join(self.lines[-40:])}")  # fmt: skip
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not seen:\n{''.join(self.lines[-40:])}")
            time.sleep(0.1)

    def ctrl_c(self) -> None:
        """SIGINT to the process group, as a terminal sends it."""
        self.interrupted_at = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout_s: float = 120) -> int:
        """The exit status; killed (group and all) past ``timeout_s``."""
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._pump.join(5)
        return self.proc.returncode

    def pids(self) -> list[int]:
        """The pids its banner listed (``processes : api=1, ...`` / ``processes: ...``)."""
        return [int(p) for p in re.findall(r"=(\d+)", self.wait_for(r"processes ?: .*")[0])]

    def kill(self) -> None:
        """SIGKILL it and whatever it listed as its processes (they run in their own
        sessions, out of reach of its group)."""
        listed = [int(p) for p in re.findall(r"=(\d+)", "".join(
            line for line in self.lines if "processes" in line))]  # fmt: skip
        for pid in [self.proc.pid, *listed]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)

    def __enter__(self) -> BdiProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()  # a failed test leaves nothing running either


def still_alive(pids: list[int], timeout_s: float = 10) -> list[int]:
    """Those of ``pids`` still alive after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]
