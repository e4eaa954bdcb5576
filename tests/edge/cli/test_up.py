"""``bdi up`` as a real process, run as a terminal runs it (its own process group, Ctrl-C
to the whole group): broker, API and consumers come up on free ports, each consumer
reports on its own health port, frames published to Kafka get verdicts, a Ctrl-C stops
every process in order with a summary and no traceback, and answered frames are committed.
Taken ports are refused before anything claims to be up."""

from __future__ import annotations

import asyncio
import http.server
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from edge.simulator.discs import encode_png, make_ng, make_ok
from tests.helpers.api import free_port
from tests.helpers.kafka import (
    ROI,
    ROLE,
    Broker,
    FrameSpec,
    answered,
    committed,
    disc_frames,
    end_offsets,
    parse,
    produce,
    read_all,
    read_until,
)
from tests.helpers.terminal import BdiProcess, bdi_env, free_run, still_alive

pytestmark = pytest.mark.slow
SIZE = 96
IDS = {"recipe_id": "disc-a", "role_id": ROLE, "roi_id": ROI}
# consumers first, then the API, then the broker (when bdi up started one)
STOPPED = (
    r"bdi up: stopped consumer-1 \(exit 0, [\d.]+ s\), consumer-2 \(exit 0, [\d.]+ s\), "
    r"api \(exit 0, [\d.]+ s\)(, broker \((exit 0|signal 15), [\d.]+ s\))? in [\d.]+ s"
)
NOT_CLEAN = ("Traceback", "KafkaConnectionError", "CancelledError", "Unable connect")


def _train(api: str) -> None:
    ok = [encode_png(make_ok(s, SIZE).image) for s in range(20)]
    r = httpx.post(
        f"{api}/fit_ok",
        data={**IDS, "mm_per_px": "0.1"},
        files=[("images", (f"{i}.png", b)) for i, b in enumerate(ok)],
        timeout=120,
    )
    assert r.status_code == 200, r.text
    scores: dict[str, list[float]] = {"ok_scores": [], "ng_scores": []}
    for seed in range(100, 106):
        for key, disc in (("ok_scores", make_ok(seed, SIZE)), ("ng_scores", make_ng(seed, SIZE))):
            res = httpx.post(
                f"{api}/infer",
                data=IDS,
                files={"image": ("f.png", encode_png(disc.image))},
                timeout=60,
            )
            scores[key].append(res.json()["score"])
    cal = httpx.post(f"{api}/calibrate_ng", json={**IDS, **scores}, timeout=60)
    assert cal.status_code == 200, cal.text


def _health_urls(up: BdiProcess) -> dict[str, str]:
    up.wait_for(r"processes : ")
    return dict(re.findall(r"^\s+(consumer-\d+)\s+(http://\S+/health)\s+/metrics$", up.text, re.M))


def test_bdi_up_runs_the_line_and_stops_cleanly(tmp_path):
    api_port = free_port()
    env = bdi_env(tmp_path / "models", BDI_IMAGE_SIZE=SIZE, BDI_MODEL_POLL_S=0.5)
    with BdiProcess(["up", "--port", str(api_port), "--broker-port", "0", "--partitions", "2",
                     "--consumers", "2", "--no-trace"], env) as up:  # fmt: skip
        bootstrap = up.wait_for(r"Kafka\s+: (\S+)").group(1)
        assert f"http://127.0.0.1:{api_port}" in up.text
        assert "CPU allowed" in up.text
        pids = up.pids()
        assert len(pids) == 4  # api, two consumers, the broker

        # consumer metrics are on by default, one health port each, both reporting
        urls = _health_urls(up)
        assert sorted(urls) == ["consumer-1", "consumer-2"] and len(set(urls.values())) == 2
        for url in urls.values():
            health = httpx.get(url, timeout=5)
            assert health.status_code == 200 and health.json()["ready"] is True, health.text
            metrics = httpx.get(url.replace("/health", "/metrics"), timeout=5).text
            assert "bdi_consumer_ready 1" in metrics

        # the port is ours: a second bdi up or bdi serve on it refuses, and never says "up"
        dev = {**env, "BDI_REQUIRE_CUDA": "0", "BDI_BACKBONE": "efficientnet_lite0"}
        for args in (["up", "--port", str(api_port), "--broker-port", "0", "--consumers", "1"],
                     ["serve", "--port", str(api_port)]):  # fmt: skip
            second = subprocess.run([sys.executable, "-m", "edge.cli", *args], env=dev,
                                    capture_output=True, text=True, timeout=120)  # fmt: skip
            assert second.returncode == 2, second.stdout + second.stderr
            assert "is up" not in second.stdout and "BDI Edge API on" not in second.stdout
            assert len(second.stderr.splitlines()) == 1, second.stderr
            assert f"port {api_port} on 127.0.0.1 is in use" in second.stderr

        up.wait_for(r"consumer-2\].*partitions assigned")
        _train(f"http://127.0.0.1:{api_port}")
        frames = disc_frames(20, SIZE, ng_every=5, tag="up")
        asyncio.run(produce(bootstrap, "bdi.frames", frames))
        records = asyncio.run(
            read_until(bootstrap, "bdi.verdicts", answered({f.frame_id for f in frames}))
        )
        verdicts = {v["frame_id"]: v["verdict"] for v in parse(records)}
        assert verdicts == {f.frame_id: f.expect for f in frames}

        up.ctrl_c()
        assert up.wait(60) == 0, up.text[-3000:]
    assert re.search(STOPPED, up.text) and "broker (" in up.text, up.text[-3000:]
    assert not [s for s in NOT_CLEAN if s in up.text], up.text[-5000:]
    assert not still_alive(pids), "bdi up left processes running"


def test_bdi_up_runs_the_trace_store_and_the_api_reads_it(tmp_path):
    """``bdi trace`` is a child of ``bdi up`` (named in the banner with its database): the
    verdicts of published frames reach the trace, ``GET /verdicts``, ``/frames/{id}`` (its
    crop and heatmap) and ``/parts/{id}`` answer them, and Ctrl-C stops it cleanly too."""
    api_port = free_port()
    models = tmp_path / "models"
    env = bdi_env(models, BDI_IMAGE_SIZE=SIZE, BDI_MODEL_POLL_S=0.5)
    with BdiProcess(["up", "--port", str(api_port), "--broker-port", "0", "--partitions", "1",
                     "--consumers", "1"], env) as up:  # fmt: skip
        db = up.wait_for(r"trace\s+: bdi trace in group bdi-trace -> SQLite (\S+)").group(1)
        assert db == str((models / "trace" / "trace.db").resolve())
        bootstrap = up.wait_for(r"Kafka\s+: (\S+)").group(1)
        pids = up.pids()
        assert len(pids) == 4  # api, the consumer, trace, the broker
        up.wait_for(r"consumer-1\].*partitions assigned")
        api = f"http://127.0.0.1:{api_port}"
        _train(api)
        frames = disc_frames(10, SIZE, ng_every=5, tag="tr")
        asyncio.run(produce(bootstrap, "bdi.frames", frames))
        records = asyncio.run(
            read_until(bootstrap, "bdi.verdicts", answered({f.frame_id for f in frames}))
        )
        wanted = {v["frame_id"]: v["verdict"] for v in parse(records)}  # what MES was told
        deadline, stored = time.monotonic() + 90, {}
        while set(stored) != set(wanted) and time.monotonic() < deadline:
            page = httpx.get(f"{api}/verdicts", params={"limit": 100}, timeout=10)
            if page.status_code == 200:  # 503 until bdi trace created its database
                stored = {v["frame_id"]: v["verdict"] for v in page.json()["verdicts"]}
            time.sleep(0.5)
        assert stored == wanted, up.text[-3000:]
        ng = next(f for f in frames if stored[f.frame_id] == "NG")
        frame = httpx.get(f"{api}/frames/{ng.frame_id}", timeout=10).json()
        assert frame["verdict"]["verdict"] == "NG"
        assert httpx.get(api + frame["crop_url"], timeout=10).content == ng.value
        heat = httpx.get(api + frame["heatmap_url"], timeout=60)
        assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
        part = httpx.get(api + frame["part_url"], timeout=10).json()  # no plan: no record
        assert part["decided"] is False and len(part["other_frames"]) == 2
        up.ctrl_c()
        assert up.wait(60) == 0, up.text[-3000:]
    stopped = r"api \(exit 0, [\d.]+ s\), trace \(exit 0, [\d.]+ s\)"
    assert re.search(stopped, up.text), up.text[-3000:]
    assert not [s for s in NOT_CLEAN if s in up.text], up.text[-5000:]
    assert not still_alive(pids), "bdi up left processes running"


class _Camera(threading.Thread):
    """Publishes frames at a steady rate until stopped; where each one landed."""

    def __init__(self, bootstrap: str, topic: str, frames: list[FrameSpec], fps: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.frames, self.fps = bootstrap, topic, frames, fps
        self.landed: dict[tuple[int, int], FrameSpec] = {}
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _publish(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            for f in self.frames:
                if self.halt.is_set():
                    break
                sent = await producer.send(self.topic, f.value, key=f.key, headers=f.headers)
                meta = await sent
                self.landed[(meta.partition, meta.offset)] = f
                await asyncio.sleep(1 / self.fps)
        finally:
            await producer.stop()


@pytest.fixture
def camera() -> Iterator[list[_Camera]]:
    cameras: list[_Camera] = []
    yield cameras
    for cam in cameras:
        cam.halt.set()
        cam.join(30)


@pytest.mark.kafka
def test_ctrl_c_with_traffic_flowing_commits_every_answered_frame(
    tmp_path, kafka_broker: Broker, make_topics, camera
):
    """On an external broker, so that the group's commits can be read after ``bdi up`` is
    gone: every frame answered is below the committed offset, every frame below it was
    answered, and nothing is left running or printed a traceback."""
    topics = make_topics(partitions=2)
    base = free_run(2)
    env = bdi_env(
        tmp_path / "models", BDI_IMAGE_SIZE=SIZE, BDI_MODEL_POLL_S=0.5,
        BDI_CONSUMER_HEALTH_PORT=base,
        **{f"BDI_{k.upper()}": v for k, v in topics.settings(kafka_broker.bootstrap).items()},
    )  # fmt: skip
    api_port = free_port()
    with BdiProcess(["up", "--port", str(api_port), "--partitions", "2", "--consumers", "2",
                     "--no-trace"], env) as up:  # fmt: skip
        pids = up.pids()
        assert len(pids) == 3, up.text  # api and two consumers: the broker is not ours
        assert _health_urls(up) == {
            "consumer-1": f"http://127.0.0.1:{base}/health",
            "consumer-2": f"http://127.0.0.1:{base + 1}/health",
        }  # BDI_CONSUMER_HEALTH_PORT + index
        _train(f"http://127.0.0.1:{api_port}")
        cam = _Camera(kafka_broker.bootstrap, topics.frames, disc_frames(400, SIZE, tag="cc"), 8)
        camera.append(cam)
        cam.start()
        asyncio.run(read_until(kafka_broker.bootstrap, topics.verdicts, lambda r: len(r) >= 16))
        up.ctrl_c()
        sent_at_ctrl_c = len(cam.landed)
        assert up.wait(60) == 0, up.text[-3000:]
        stop_s = time.monotonic() - (up.interrupted_at or 0.0)
        assert len(cam.landed) > sent_at_ctrl_c, "frames kept coming while bdi up stopped"
        cam.halt.set()
        cam.join(30)
    assert cam.error is None, cam.error
    assert re.search(STOPPED, up.text), up.text[-3000:]
    assert not [s for s in NOT_CLEAN if s in up.text], up.text[-5000:]
    assert not still_alive(pids), "bdi up left processes running"

    bootstrap = kafka_broker.bootstrap
    commits = asyncio.run(committed(bootstrap, topics.group, topics.frames))
    ends = asyncio.run(end_offsets(bootstrap, topics.frames))
    verdicts = parse(asyncio.run(read_all(bootstrap, topics.verdicts)))
    answered_at = {(v["source"]["partition"], v["source"]["offset"]): v for v in verdicts}
    for (p, o), v in answered_at.items():
        assert v["frame_id"] == cam.landed[(p, o)].frame_id
        assert v["verdict"] == cam.landed[(p, o)].expect
    uncommitted = [po for po in answered_at if po[1] >= (commits[po[0]] or 0)]
    assert not uncommitted, f"answered but not committed: {uncommitted} (commits {commits})"
    unanswered = [(p, o) for p, c in commits.items() for o in range(c or 0)
                  if (p, o) not in answered_at]  # fmt: skip
    assert not unanswered, f"committed without a verdict: {unanswered}"
    assert sum(ends.values()) > sum(c or 0 for c in commits.values())  # some left for later
    print(f"stopped in {stop_s:.1f} s; committed {commits} of {ends}; {len(answered_at)} answered")


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _bdi_up(env: dict[str, str], port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", "up", "--port", str(port), "--consumers", "2"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_bdi_up_on_taken_ports_refuses_before_starting_anything(tmp_path):
    env = bdi_env(tmp_path / "models")
    # the API port held by a service that answers /health: not ours, so never "up"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        done = _bdi_up(env, port)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is up" not in done.stdout and "[api]" not in done.stdout
    assert done.stderr.splitlines() == [
        f"bdi: error: port {port} on 127.0.0.1 is in use (another bdi up or bdi serve?); "
        "choose another with --port or BDI_BACKEND_PORT"
    ]

    # the second consumer's health port (BDI_CONSUMER_HEALTH_PORT + 1) taken
    base = free_run(2)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", base + 1))
        holder.listen()
        done = _bdi_up({**env, "BDI_CONSUMER_HEALTH_PORT": str(base)}, free_port())
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is up" not in done.stdout and "[api]" not in done.stdout
    assert done.stderr.splitlines() == [
        f"bdi: error: port {base + 1} on 127.0.0.1 is in use (another bdi up?); "
        "set BDI_CONSUMER_HEALTH_PORT to a free base"
    ]


@pytest.mark.kafka
def test_bdi_up_on_apache_kafka(tmp_path):
    """``--broker kafka``: one KRaft node from the jars instead of Tansu, named in the
    banner; frames get verdicts and Ctrl-C stops the node too."""
    from consumers.apache_kafka import missing_tools

    if missing := missing_tools():
        pytest.skip(f"Apache Kafka cannot run here: missing {'; '.join(missing)}")
    api_port = free_port()
    env = bdi_env(tmp_path / "models", BDI_IMAGE_SIZE=SIZE, BDI_MODEL_POLL_S=0.5)
    args = ["up", "--broker", "kafka", "--port", str(api_port), "--broker-port", "0",
            "--partitions", "2", "--consumers", "1", "--no-trace"]  # fmt: skip
    with BdiProcess(args, env) as up:
        bootstrap = up.wait_for(r"Kafka\s+: (\S+)").group(1)
        assert "local Apache Kafka 4.4.0, KRaft" in up.text
        pids = up.pids()
        assert len(pids) == 3  # api, the consumer, the broker
        up.wait_for(r"consumer-1\].*partitions assigned")
        _train(f"http://127.0.0.1:{api_port}")
        frames = disc_frames(10, SIZE, ng_every=5, tag="kup")
        asyncio.run(produce(bootstrap, "bdi.frames", frames))
        records = asyncio.run(
            read_until(bootstrap, "bdi.verdicts", answered({f.frame_id for f in frames}))
        )
        assert {v["frame_id"]: v["verdict"] for v in parse(records)} == {
            f.frame_id: f.expect for f in frames
        }
        up.ctrl_c()
        assert up.wait(90) == 0, up.text[-3000:]
    assert re.search(r"broker \(exit \d+, [\d.]+ s\)", up.text), up.text[-3000:]
    assert not [s for s in NOT_CLEAN if s in up.text], up.text[-5000:]
    assert not still_alive(pids), "bdi up left processes running"


def test_bdi_up_names_what_apache_kafka_lacks(tmp_path):
    env = bdi_env(tmp_path / "models")
    env.update(PATH=str(tmp_path), BDI_KAFKA_HOME=str(tmp_path / "kafka"))  # no java, no mvn
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", "up", "--broker", "kafka", "--port", str(free_port()),
         "--broker-port", "0", "--consumers", "1"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "bdi: error: Apache Kafka cannot run here: missing Java 17+" in done.stderr
    assert "Maven" in done.stderr and "Traceback" not in done.stderr
    assert "is up" not in done.stdout
