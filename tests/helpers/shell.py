"""Shell commands as a person types them: the ``bash`` blocks of a Markdown page, a shell
that keeps its variables and working directory from one block to the next, and a
long-running command in the background that is stopped with Ctrl-C."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path


def bash_blocks(page: Path, section: str) -> list[str]:
    """The fenced ```bash blocks under the ``## section`` heading of a Markdown page."""
    text = page.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end > 0 else None]
    return re.findall(r"```bash\n(.*?)```", body, flags=re.S)


def commands(block: str) -> list[str]:
    """The commands of a block: continuation lines joined, comments and blank lines out."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [re.sub(r"\s+#\s.*$", "", ln).strip() for ln in joined.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


class _Output:
    """A process's merged output, read line by line on a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(process,), daemon=True).start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, wanted: str, timeout_s: float) -> str:
        """Output up to the first line holding ``wanted``; AssertionError if the process
        ends or the time runs out first."""
        deadline = time.monotonic() + timeout_s
        start = len(self.seen)
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {wanted!r} in {timeout_s:.0f} s:\n{self.text}") from None
            if line is None:
                raise AssertionError(f"ended before {wanted!r}:\n{self.text}")
            self.seen.append(line)
            if wanted in line:
                return "".join(self.seen[start:])

    def rest(self, timeout_s: float) -> str:
        """Everything until the process closes its output."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.seen)


class Shell:
    """One ``bash -e -o pipefail`` session: blocks run in it one after another, as typed."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-s"],
            cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.output = _Output(self.process)
        self.blocks = 0

    def run(self, block: str, timeout_s: float = 120) -> str:
        """The block's output; AssertionError (with the output) if a command in it fails."""
        assert self.process.stdin is not None
        self.blocks += 1
        marker = f"@@block-{self.blocks}-done"
        self.process.stdin.write(f"{block}\necho {marker}\n")
        self.process.stdin.flush()
        return self.output.until(marker, timeout_s).replace(f"{marker}\n", "")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


class Background:
    """A command typed in a terminal of its own; ``interrupt`` is Ctrl-C there (SIGINT to
    its whole process group)."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-c", command],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self.output = _Output(self.process)

    def interrupt(self, timeout_s: float = 60) -> str:
        """Ctrl-C, then the whole output once it has ended (killed if it does not)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            text = self.output.text
            raise AssertionError(f"still running {timeout_s} s after Ctrl-C:\n{text}") from None
        return self.output.rest(10)
