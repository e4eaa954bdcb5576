"""Tools an operator has, against Apache Kafka: Debian's ``kcat`` publishes a frame as a
camera would and reads its verdict, and ``kafka-consumer-groups --describe`` (Apache
Kafka's own tool, from its jars) shows the consumer group's lag. docs/KAFKA.md gives the
same commands."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import orjson
import pytest

from consumers.apache_kafka import classpath_dir
from tests.helpers.images import SIZE
from tests.helpers.kafka import disc_frames, produce, running, wait_all_committed

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _kcat() -> str:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("Debian's kcat is not installed (make install installs it where apt-get can)")
    return kcat


def test_kcat_publishes_a_frame_and_reads_its_verdict(kafka_broker, make_topics, trained, tmp_path):
    if kafka_broker.kind == "tansu":
        pytest.skip("kcat (librdkafka 2.0) fails the handshake with Tansu")
    kcat = _kcat()
    topics = make_topics(partitions=2)
    boot = kafka_broker.bootstrap
    settings = trained.settings(**topics.settings(boot))
    [frame] = disc_frames(1, SIZE, seed=9, tag="kcat")
    image = tmp_path / "roi1.png"
    image.write_bytes(frame.value or b"")
    head = [a for k, v in frame.headers for a in ("-H", f"{k}={v.decode()}")]

    async def scenario() -> str:
        async with running(trained.consumer(settings), assigned=2):
            subprocess.run([kcat, "-P", "-b", boot, "-t", topics.frames, "-k", "SN-1", *head,
                            str(image)], check=True, timeout=60)  # fmt: skip
            await wait_all_committed(boot, topics.group, topics.frames, 60)
        done = subprocess.run([kcat, "-C", "-b", boot, "-t", topics.verdicts, "-o", "beginning",
                               "-e", "-f", "%k\t%s\n"], capture_output=True, text=True,
                              timeout=60, check=True)  # fmt: skip
        return done.stdout

    out = asyncio.run(scenario())
    [line] = [row for row in out.splitlines() if row.strip()]
    key, value = line.split("\t", 1)
    verdict = orjson.loads(value)
    assert key == frame.frame_id == verdict["frame_id"]
    assert verdict["verdict"] == frame.expect


def test_kafka_consumer_groups_shows_the_lag(kafka_broker, make_topics, trained):
    if kafka_broker.kind != "apache-kafka":
        pytest.skip(f"the tool comes with Apache Kafka's jars; the broker is {kafka_broker.kind}")
    topics = make_topics(partitions=2)
    boot = kafka_broker.bootstrap
    settings = trained.settings(**topics.settings(boot))
    frames = disc_frames(16, SIZE, seed=10, tag="lag")

    async def scenario() -> None:
        async with running(trained.consumer(settings), assigned=2):
            await produce(boot, topics.frames, frames[:10])
            await wait_all_committed(boot, topics.group, topics.frames, 60)
        await produce(boot, topics.frames, frames[10:])  # nobody answers these yet

    asyncio.run(scenario())
    done = subprocess.run(
        ["java", "-cp", f"{classpath_dir()}/*",
         "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
         "--bootstrap-server", boot, "--describe", "--group", topics.group],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [r.split() for r in done.stdout.splitlines() if r.startswith(topics.group)]
    header = next(r.split() for r in done.stdout.splitlines() if "LAG" in r)
    lag = header.index("LAG")
    assert len(rows) == 2 and all(re.fullmatch(r"\d+", r[lag]) for r in rows), done.stdout
    assert sum(int(r[lag]) for r in rows) == 6, done.stdout
