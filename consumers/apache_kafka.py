"""Apache Kafka itself, run locally from its Maven Central jars: KRaft clusters of one or
three nodes for the tests and ``bdi up --broker kafka``. No Docker needed, only Java 17+
and Maven.

``deploy/kafka/pom.xml`` pins the broker; :func:`ensure_classpath` has Maven copy its
classpath once into ``.kafka/<version>/lib`` (git-ignored; ``BDI_KAFKA_HOME`` moves it).
:class:`KafkaCluster` then formats each node's storage (``kafka.tools.StorageTool``, as
``bin/kafka-storage.sh`` does) and starts ``kafka.Kafka`` per node, each node both broker
and controller, with durable log dirs in a folder of its own. See docs/KAFKA.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from consumers.broker import answers, free_port
from consumers.errors import ConsumerError
from consumers.secure_listener import SecureListener, scram_args, secured_properties

KAFKA_VERSION = "4.4.0"  # keep in step with deploy/kafka/pom.xml
REPO = Path(__file__).resolve().parents[1]
POM = REPO / "deploy" / "kafka" / "pom.xml"
JAVA_MIN = 17
# heap per node: small clusters of test topics (the JVM's default would take a quarter of RAM)
NODE_HEAP = "512m"
JVM_TERMINATED = 128 + signal.SIGTERM
_LOG4J = """\
rootLogger.level=WARN
rootLogger.appenderRef.out.ref=OUT
appender.out.type=Console
appender.out.name=OUT
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
logger.server.name=kafka.server.KafkaRaftServer
logger.server.level=INFO
"""


def kafka_home() -> Path:
    return Path(os.environ.get("BDI_KAFKA_HOME") or REPO / ".kafka")


def classpath_dir() -> Path:
    return kafka_home() / KAFKA_VERSION / "lib"


def java_version(java: str = "java") -> int | None:
    """The major version of ``java`` (``java -version``), None when it does not run."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8" is Java 8


def missing_tools() -> list[str]:
    """What this machine lacks to run Apache Kafka from its jars (empty: nothing)."""
    missing = []
    version = java_version() if shutil.which("java") else None
    if version is None:
        missing.append(f"Java {JAVA_MIN}+ (no `java` on PATH)")
    elif version < JAVA_MIN:
        missing.append(f"Java {JAVA_MIN}+ (`java` is Java {version})")
    if not (classpath_dir() / ".complete").is_file() and shutil.which("mvn") is None:
        missing.append("Maven (`mvn`, to fetch Apache Kafka's jars from Maven Central)")
    return missing


def ensure_classpath(timeout_s: float = 600.0) -> Path:
    """The broker's classpath folder, fetched by Maven on first use (then cached)."""
    lib = classpath_dir()
    if (lib / ".complete").is_file():
        return lib
    missing = missing_tools()
    if missing:
        raise ConsumerError("Apache Kafka cannot run here: missing " + "; ".join(missing))
    lib.parent.mkdir(parents=True, exist_ok=True)
    with open(lib.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching the same
        if (lib / ".complete").is_file():
            return lib
        staging = Path(tempfile.mkdtemp(prefix="lib-", dir=lib.parent))
        cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
               f"-DoutputDirectory={staging}"]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            shutil.rmtree(staging, ignore_errors=True)
            raise ConsumerError(
                f"Maven did not fetch Apache Kafka within {timeout_s:.0f} s"
            ) from None
        if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            tail = (done.stdout + done.stderr).strip()[-1500:]
            raise ConsumerError(f"Maven could not fetch Apache Kafka {KAFKA_VERSION}: {tail}")
        (staging / ".complete").write_text(KAFKA_VERSION)
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
    return lib


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaNode:
    node_id: int
    port: int
    controller_port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def config(self) -> Path:
        return self.folder / "server.properties"

    @property
    def log(self) -> Path:
        return self.folder / "node.log"

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


class KafkaCluster:
    """``with KafkaCluster(nodes=3) as cluster: cluster.bootstrap`` -> ``"127.0.0.1:P1,..."``.

    Each node is broker and controller. With three nodes topics default to replication 3
    and ``min.insync.replicas=2`` (internal topics too), so one node may be down without
    losing an acknowledged write. ``settings`` adds or overrides server properties.
    Node logs stay in the cluster's folder; :meth:`stop` removes the folder unless
    ``keep`` (the test fixture keeps it when a test failed).
    """

    def __init__(
        self,
        nodes: int = 1,
        root: Path | None = None,
        host: str = "127.0.0.1",
        settings: Mapping[str, str] | None = None,
        port: int | None = None,
        secure: SecureListener | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.port = port  # node 1's client port (None: a free one)
        self.secure = secure  # a SASL_SSL client listener beside PLAINTEXT (tests)
        self.host = host
        self.settings = dict(settings or {})
        self.root = root
        self._own_root = root is None
        self.cluster_id = new_cluster_id()
        self.nodes: list[KafkaNode] = []
        self._n = nodes
        self.lib: Path | None = None

    @property
    def bootstrap(self) -> str:
        if not self.nodes:
            raise ConsumerError("Apache Kafka is not started")
        return ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    # --- life cycle --------------------------------------------------------------------
    def start(self, timeout_s: float = 90.0) -> KafkaCluster:
        self.lib = ensure_classpath()
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="bdi-kafka-"))
        ports = _distinct_ports(2 * self._n, self.host, first=self.port)
        self.nodes = [
            KafkaNode(i + 1, ports[2 * i], ports[2 * i + 1], self.root / f"node{i + 1}")
            for i in range(self._n)
        ]
        for node in self.nodes:
            node.folder.mkdir(parents=True, exist_ok=True)
            node.config.write_text(self._properties(node))
            (node.folder / "log4j2.properties").write_text(_LOG4J)
            self._format(node)
        for node in self.nodes:
            self.start_node(node.node_id, wait=False)
        self.wait_ready(timeout_s)
        return self

    def _properties(self, node: KafkaNode) -> str:
        n = self._n
        voters = ",".join(f"{m.node_id}@{self.host}:{m.controller_port}" for m in self.nodes)
        replicas, min_isr = (3, 2) if n >= 3 else (n, 1)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{self.host}:{node.port},"
            f"CONTROLLER://{self.host}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.data),
            "default.replication.factor": str(replicas),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(replicas),
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(min_isr),
            # a test's consumer group forms at once, not after the default 3 s
            "group.initial.rebalance.delay.ms": "0",
            # tests notice a lost member within seconds (the broker's floor is 6 s)
            "group.min.session.timeout.ms": "500",
            "auto.create.topics.enable": "true",
            **self.settings,
        }
        props |= secured_properties(self.secure, props, node.node_id) | self.settings
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _java(self, node: KafkaNode, main: str, *args: str) -> list[str]:
        assert self.lib is not None
        return ["java", f"-Xmx{NODE_HEAP}", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={node.folder / 'log4j2.properties'}",
                "-cp", f"{self.lib}/*", main, *args]  # fmt: skip

    def _format(self, node: KafkaNode) -> None:
        # ``--cluster-id=...``: an id may begin with "-", which a separate argument would
        # turn into an option
        cmd = self._java(node, "kafka.tools.StorageTool", "format",
                         f"--cluster-id={self.cluster_id}", f"--config={node.config}",
                         "--ignore-formatted", *scram_args(self.secure))  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip()[-1500:]
            raise ConsumerError(f"formatting Kafka node {node.node_id}'s storage failed: {tail}")

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def start_node(self, node_id: int, wait: bool = True, timeout_s: float = 60.0) -> None:
        """(Re)start a node on its own ports and data: a restarted node keeps its log."""
        node = self.node(node_id)
        if node.process is not None and node.process.poll() is None:
            return
        with open(node.log, "ab") as log:
            # its own session: a Ctrl-C at the terminal reaches whoever started it, which
            # stops the brokers last
            node.process = subprocess.Popen(
                self._java(node, "kafka.Kafka", str(node.config)),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        if wait:
            self._wait_port(node, time.monotonic() + timeout_s)

    def signal_node(self, node_id: int, sig: signal.Signals) -> None:
        """Send ``sig`` to a node (SIGKILL: a crash; SIGSTOP / SIGCONT: a freeze)."""
        process = self.node(node_id).process
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            if sig == signal.SIGKILL:
                process.wait(30)

    def stop_node(self, node_id: int, timeout_s: float = 30.0) -> int | None:
        """A controlled shutdown (SIGTERM), killed after ``timeout_s``; its exit status."""
        node = self.node(node_id)
        process, node.process = node.process, None
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)  # a frozen node cannot shut down
        process.terminate()
        try:
            code = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout_s)
        # the JVM exits 128 + 15 once its shutdown hooks (Kafka's controlled shutdown) ran
        return 0 if code == JVM_TERMINATED else code

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """Node 1's process (the one node of a local broker)."""
        return self.nodes[0].process if self.nodes else None

    def stop(self, keep: bool = False) -> int | None:
        """Stop every node; node 1's exit status (None if it was not running)."""
        codes = [self.stop_node(node.node_id) for node in reversed(self.nodes)]
        if self._own_root and self.root is not None and not keep:
            shutil.rmtree(self.root, ignore_errors=True)
        return codes[-1] if codes else None

    # --- readiness ---------------------------------------------------------------------
    def _wait_port(self, node: KafkaNode, deadline: float) -> None:
        while not answers(self.host, node.port):
            if node.process is None or node.process.poll() is not None:
                raise ConsumerError(
                    f"Kafka node {node.node_id} exited while starting; its log ends:\n"
                    f"{node.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ConsumerError(
                    f"Kafka node {node.node_id} did not listen on {self.host}:{node.port}; "
                    f"its log ends:\n{node.log_tail()}"
                )
            time.sleep(0.1)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Every running node listens and the cluster's metadata names them all."""
        deadline = time.monotonic() + timeout_s
        running = [n for n in self.nodes if n.process is not None]
        for node in running:
            self._wait_port(node, deadline)
        while True:
            seen = asyncio.run(_brokers(self.bootstrap))
            if seen >= {n.node_id for n in running}:
                return
            if time.monotonic() > deadline:
                raise ConsumerError(
                    f"Apache Kafka: brokers {sorted(seen)} registered of "
                    f"{[n.node_id for n in running]} within {timeout_s:.0f} s"
                )
            time.sleep(0.2)

    def __enter__(self) -> KafkaCluster:
        return self.start() if not self.nodes else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(keep=exc is not None)


async def _brokers(bootstrap: str) -> set[int]:
    """Node ids of the brokers the cluster's metadata lists (empty on any failure)."""
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await client.bootstrap()
        metadata = await client.fetch_all_metadata()
        return {b.nodeId for b in metadata.brokers()}
    except Exception:  # not up yet: the caller retries until its deadline
        return set()
    finally:
        await client.close()


def _distinct_ports(n: int, host: str, first: int | None = None) -> list[int]:
    ports: list[int] = [] if first is None else [first]
    while len(ports) < n:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def main() -> int:
    """``python -m consumers.apache_kafka``: fetch the broker's jars now (``make install``
    does), or say why this machine cannot run Apache Kafka."""
    missing = missing_tools()
    if missing:
        print(f"Apache Kafka: skipped, missing {'; '.join(missing)} (the Kafka tests then "
              "skip, saying so)")  # fmt: skip
        return 0
    try:
        lib = ensure_classpath()
    except ConsumerError as exc:
        print(f"Apache Kafka: {exc}")
        return 1
    print(f"Apache Kafka {KAFKA_VERSION}: {len(list(lib.glob('*.jar')))} jars in {lib}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
