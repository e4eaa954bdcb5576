"""Child processes stopped in order: what ``bdi up`` and ``bdi demo`` supervise.

Children run in their own sessions (a Ctrl-C at the terminal reaches the supervisor alone),
their output is copied onto ours prefixed with their name, and :meth:`Supervisor.stop`
stops the consumers first, then the API, then the broker, and says how each one ended.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consumers.apache_kafka import KafkaCluster
    from consumers.broker import LocalBroker

API_STOP_S = 10.0  # uvicorn's own graceful shutdown is quick; past this it is killed


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    ready_line: str | None = None  # the line that says the child holds its port
    health_url: str | None = None
    pump: threading.Thread | None = None
    bound: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Stopped:
    name: str
    returncode: int | None
    seconds: float
    killed: bool = False

    @property
    def clean(self) -> bool:  # stopped on request: exit 0, or the SIGTERM it was sent
        return not self.killed and self.returncode in (0, -signal.SIGTERM)

    def __str__(self) -> str:
        rc = self.returncode
        if self.killed:
            how = "killed"
        elif rc is not None and rc < 0:
            how = f"signal {-rc}"
        else:
            how = f"exit {rc}"
        return f"{self.name} ({how}, {self.seconds:.1f} s)"


@dataclass
class Supervisor:
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)
    broker: LocalBroker | KafkaCluster | None = None

    def spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None, **kw: Any
    ) -> Child:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", *args],
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to the supervisor, which stops us in order
        )
        child = Child(name, process, **kw)
        child.pump = threading.Thread(target=_prefix_output, args=(child,), daemon=True)
        child.pump.start()
        self.children.append(child)
        return child

    def pids(self) -> str:
        out = ", ".join(f"{c.name}={c.process.pid}" for c in self.children)
        if self.broker is not None and self.broker.process is not None:
            out += f", broker={self.broker.process.pid}"
        return out

    def first_exit(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self, grace_s: float) -> list[Stopped]:
        """Consumers (SIGTERM: they finish or abandon their batch, commit, leave), then the
        API, then the broker; each group killed past its time. A second Ctrl-C kills what
        is left at once. Returns what stopped, in order; a second call stops nothing."""
        hurry = threading.Event()
        previous = on_interrupt(lambda: hurry.set())
        try:
            consumers = [c for c in self.children if c.name.startswith("consumer")]
            others = [c for c in self.children if not c.name.startswith("consumer")]
            done = _stop_group(consumers, grace_s + 5.0, hurry)
            done += _stop_group(others, API_STOP_S, hurry)
            for c in self.children:
                if c.pump is not None:
                    c.pump.join(2)
            self.children = []
            if self.broker is not None:
                started = time.monotonic()
                rc = self.broker.stop()  # killed when SIGTERM does not do within 5 s
                killed = rc == -signal.SIGKILL
                done.append(Stopped("broker", rc, time.monotonic() - started, killed))
                self.broker = None
            return done
        finally:
            restore(previous)


def _stop_group(group: list[Child], timeout_s: float, hurry: threading.Event) -> list[Stopped]:
    started = time.monotonic()
    for c in group:
        if c.process.poll() is None:
            c.process.send_signal(signal.SIGTERM)
    took: dict[str, float] = {}
    deadline = started + timeout_s
    while True:
        for c in group:
            if c.name not in took and c.process.poll() is not None:
                took[c.name] = time.monotonic() - started
        if len(took) == len(group) or time.monotonic() > deadline or hurry.is_set():
            break
        time.sleep(0.05)
    out = []
    for c in group:
        killed = c.name not in took
        if killed:
            c.process.kill()
            c.process.wait(5)
        seconds = took.get(c.name, time.monotonic() - started)
        out.append(Stopped(c.name, c.process.returncode, seconds, killed))
    return out


def summary(prog: str, stopped: list[Stopped], seconds: float) -> str:
    """``bdi up: stopped consumer-1 (exit 0, 1.2 s), ..., broker (exit 0, 0.0 s) in 1.6 s``"""
    return f"{prog}: stopped {', '.join(map(str, stopped))} in {seconds:.1f} s"


def shutdown(sup: Supervisor, grace_s: float, prog: str) -> bool:
    """Stop everything, print the summary; whether every process stopped cleanly."""
    if sup.children or sup.broker is not None:
        print(f"{prog}: stopping (Ctrl-C again to kill at once)", flush=True)
    started = time.monotonic()
    stopped = sup.stop(grace_s)
    if stopped:
        print(summary(prog, stopped, time.monotonic() - started), flush=True)
    return all(s.clean for s in stopped)


Handlers = dict[int, Any]


def on_interrupt(callback: Callable[[], None]) -> Handlers:
    """SIGINT and SIGTERM call ``callback`` (only a request: it sets a flag); the previous
    handlers, for :func:`restore`. Outside the main thread nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {
        sig: signal.signal(sig, lambda *_: callback()) for sig in (signal.SIGINT, signal.SIGTERM)
    }


def restore(previous: Handlers) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _prefix_output(child: Child) -> None:
    """Each child's output on ours, one line at a time, prefixed with its name."""
    assert child.process.stdout is not None
    for raw in iter(child.process.stdout.readline, b""):
        line = raw.decode(errors="replace")
        if child.ready_line is not None and line.startswith(child.ready_line):
            child.bound.set()
        sys.stdout.write(f"[{child.name}] {line}")
        sys.stdout.flush()
