"""TLS and SASL: the settings as client options, on every client a consumer makes; a
refused connection named in one line (an untrusted, expired or misnamed certificate, a
wrong password, a listener of another protocol); and the frame -> verdict path through a
SASL_SSL listener of Apache Kafka, for PLAIN and both SCRAMs. The password never shows."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from configs.settings import load_settings
from consumers import FrameConsumer
from consumers.broker import free_port
from consumers.errors import BrokerUnavailableError, ConsumerError, KafkaSecurityError
from consumers.security import security_options
from consumers.topics import ensure_topics, start_client
from tests.helpers.paths import REPO
from tests.helpers.tls import Pki, make_pki, tls_server

SECRET = "alice-Pa55-7f3c9e"
USERS = {"alice": SECRET}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _settings(pki: Pki, bootstrap: str = "127.0.0.1:9093", **overrides: object):
    values = _secured(pki, bootstrap, **overrides)
    return load_settings(**{k: v for k, v in values.items() if v is not None})


# --- client options -----------------------------------------------------------------------
def test_plaintext_adds_no_client_option():
    assert security_options(load_settings()) == {}


def test_sasl_ssl_options_verify_the_broker_and_hide_the_password(pki, tmp_path):
    password = tmp_path / "password"
    password.write_text(f"{SECRET}\n")
    settings = _settings(
        pki, kafka_sasl_password=None, kafka_sasl_password_file=password,
        kafka_ssl_certfile=pki.client_cert, kafka_ssl_keyfile=pki.client_key,
    )  # fmt: skip
    options = security_options(settings)
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["sasl_plain_username"] == "alice"
    assert options["sasl_plain_password"] == SECRET  # the file's line end dropped
    assert SECRET not in repr(options) and SECRET not in str(options)
    unchecked = security_options(_settings(pki, kafka_ssl_check_hostname=False))
    assert unchecked["ssl_context"].check_hostname is False
    assert unchecked["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # still verified


def test_a_file_that_is_no_certificate_is_a_clear_error(pki, tmp_path):
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ConsumerError, match=f"TLS: cannot load BDI_KAFKA_SSL_CAFILE={bogus}"):
        security_options(_settings(pki, kafka_ssl_cafile=bogus))


def test_every_client_of_a_consumer_gets_the_options_and_command_line_options_win(pki):
    consumer = FrameConsumer(
        _settings(pki), consumer_options={"sasl_mechanism": "PLAIN"}, producer_options={}
    )
    group, producer = consumer._consumer_kwargs(), consumer._producer_kwargs()
    for kwargs in (group, producer):  # the rebalance reader and transactional producers too
        assert kwargs["security_protocol"] == "SASL_SSL"
        assert kwargs["ssl_context"] is consumer.security["ssl_context"]
        assert kwargs["sasl_plain_password"] == SECRET
    assert group["sasl_mechanism"] == "PLAIN"  # --consumer-option on top of the settings
    assert producer["sasl_mechanism"] == "SCRAM-SHA-256"


def test_a_local_plaintext_broker_unsets_the_security_settings(monkeypatch, pki):
    """``bdi bench pipeline`` on its own broker: the consumers it starts read these."""
    from consumers.security import plaintext_overrides
    from edge.bench.pipeline import consumer_env

    for name, value in _secured(pki, "kafka-1:9094").items():
        monkeypatch.setenv(f"BDI_{name.upper()}", str(value))
    assert security_options(load_settings()) != {}
    for name, value in consumer_env(plaintext_overrides()).items():
        monkeypatch.setenv(name, value)
    assert security_options(load_settings()) == {}


# --- failures named (a bare TLS server: no Kafka needed) ----------------------------------
async def _start(bootstrap: str, settings_options: dict[str, object]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **settings_options)
    await start_client(bootstrap, producer, settings_options)


def _refusal(bootstrap: str, options: dict[str, object]) -> ConsumerError:
    with pytest.raises(ConsumerError) as err:
        asyncio.run(_start(bootstrap, options))
    return err.value


def test_an_expired_broker_certificate_is_named(pki):
    with tls_server(pki.expired_cert, pki.expired_key) as port:
        error = _refusal(f"127.0.0.1:{port}", security_options(_settings(pki)))
    assert isinstance(error, KafkaSecurityError)
    assert str(error) == (
        f"TLS: the broker's certificate at 127.0.0.1:{port} has expired "
        "(certificate verify failed: certificate has expired)"
    )


def test_a_certificate_from_another_ca_is_named(pki):
    with tls_server(pki.expired_cert, pki.expired_key) as port:
        options = security_options(_settings(pki, kafka_ssl_cafile=pki.other_ca))
        error = _refusal(f"127.0.0.1:{port}", options)
    assert str(error).startswith(
        f"TLS: the broker's certificate at 127.0.0.1:{port} is not trusted by BDI_KAFKA_SSL_CAFILE"
    )
    assert "certificate verify failed: unable to get local issuer certificate" in str(error)


def test_a_certificate_for_another_host_is_named(pki):
    server = pki.keystore.with_name("server.crt"), pki.keystore.with_name("server.key")
    with tls_server(*server, host="127.0.0.2") as port:  # its certificate names 127.0.0.1
        error = _refusal(f"127.0.0.2:{port}", security_options(_settings(pki)))
    assert str(error).startswith(
        f"TLS: the broker's certificate at 127.0.0.2:{port} does not name 127.0.0.2"
    )
    assert "BDI_KAFKA_SSL_CHECK_HOSTNAME=0" in str(error)


def test_a_listener_of_the_other_protocol_is_named(pki):
    server = pki.keystore.with_name("server.crt"), pki.keystore.with_name("server.key")
    with tls_server(*server) as port:
        error = _refusal(f"127.0.0.1:{port}", {})
    assert str(error) == (
        f"Kafka at 127.0.0.1:{port} is a TLS listener, but BDI_KAFKA_SECURITY_PROTOCOL="
        "PLAINTEXT: set SSL or SASL_SSL (and BDI_KAFKA_SSL_CAFILE)"
    )


@pytest.mark.parametrize(
    ("client", "alert"),
    [(None, "TLSV13_ALERT_CERTIFICATE_REQUIRED"), ("expired", "ALERT_CERTIFICATE_EXPIRED")],
)
def test_a_refused_client_certificate_is_named(pki, client, alert):
    """TLS 1.3 checks the client's certificate after the handshake: the alert is named."""
    server = pki.keystore.with_name("server.crt"), pki.keystore.with_name("server.key")
    mine = {"kafka_ssl_certfile": pki.expired_cert, "kafka_ssl_keyfile": pki.expired_key}
    settings = _settings(pki, **(mine if client else {}))
    with tls_server(*server, client_ca=pki.ca) as port:
        error = _refusal(f"127.0.0.1:{port}", security_options(settings))
    assert str(error).startswith(
        f"TLS: Kafka at 127.0.0.1:{port} refused the client certificate, or wants one "
        "(BDI_KAFKA_SSL_CERTFILE, BDI_KAFKA_SSL_KEYFILE): "
    )
    assert alert in str(error)


def test_the_exactly_once_probe_names_a_refusal_too(pki):
    from consumers.eos import check_transactions

    options = dict(security_options(_settings(pki)))
    with tls_server(pki.expired_cert, pki.expired_key) as port:
        expired = pytest.raises(KafkaSecurityError, match=f"at 127.0.0.1:{port} has expired")
        with expired:
            asyncio.run(check_transactions(f"127.0.0.1:{port}", "g", options))


def test_nothing_listening_is_still_unreachable(pki):
    port = free_port()
    error = _refusal(f"127.0.0.1:{port}", security_options(_settings(pki)))
    assert isinstance(error, BrokerUnavailableError)
    assert str(error).startswith(f"cannot reach Kafka at 127.0.0.1:{port}: ")


# --- bdi consume: one line, no traceback, no secret ---------------------------------------
def _bdi_consume(tmp_path: Path, settings: dict[str, object]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
    cfg = {"require_cuda": "0", "backbone": "efficientnet_lite0",
           "models_dir": tmp_path / "models", **settings}  # fmt: skip
    env.update({f"BDI_{k.upper()}": str(v) for k, v in cfg.items() if v is not None})
    env["BDI_ENV_FILE"] = os.devnull
    code = "import sys, edge.cli; sys.exit(edge.cli.main(['consume', '--log-level', 'DEBUG']))"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)  # fmt: skip


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "Traceback" not in output and SECRET not in output
    errors = [line for line in done.stderr.splitlines() if line.startswith("bdi: error:")]
    assert len(errors) == 1 and done.stderr.splitlines()[-1] == errors[0], done.stderr[-3000:]
    return errors[0]


def _secured(pki: Pki, bootstrap: str, **overrides: object) -> dict[str, object]:
    return {
        "kafka_bootstrap": bootstrap,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_ssl_cafile": pki.ca,
        "kafka_sasl_mechanism": "SCRAM-SHA-256",
        "kafka_sasl_username": "alice",
        "kafka_sasl_password": SECRET,
        **overrides,
    }


def test_bdi_consume_names_an_expired_certificate(pki, tmp_path):
    with tls_server(pki.expired_cert, pki.expired_key) as port:
        done = _bdi_consume(tmp_path, _secured(pki, f"127.0.0.1:{port}"))
    assert _one_error_line(done) == (
        f"bdi: error: TLS: the broker's certificate at 127.0.0.1:{port} has expired "
        "(certificate verify failed: certificate has expired)"
    )


# --- on Apache Kafka with a SASL_SSL listener ---------------------------------------------
@pytest.fixture(scope="module")
def secured_kafka(pki: Pki, request: pytest.FixtureRequest):
    """One Apache Kafka node with a SASL_SSL listener (TLS by ``pki``; alice for PLAIN and
    both SCRAMs; client certificates checked when presented) beside its PLAINTEXT one."""
    from consumers.apache_kafka import KafkaCluster, missing_tools
    from consumers.secure_listener import SecureListener

    missing = missing_tools()
    if missing:
        pytest.skip(f"Apache Kafka cannot run here (missing {'; '.join(missing)})")
    listener = SecureListener(pki.keystore, USERS, truststore=pki.ca)
    cluster = KafkaCluster(nodes=1, secure=listener).start()
    failed_before = request.session.testsfailed
    try:
        yield cluster
    finally:
        keep = request.session.testsfailed > failed_before
        cluster.stop(keep=keep)
        if keep:
            print(f"\nApache Kafka's logs kept in {cluster.root}")


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_frames_get_their_verdicts_through_sasl_ssl(secured_kafka, pki, trained, mechanism, caplog):
    """Topics created, frames published, scored, answered and committed, every client over
    the SASL_SSL listener (SCRAM-SHA-512 with a client certificate too)."""
    from edge.simulator.camera import Camera, CameraFrame, VerdictReader
    from tests.helpers.images import SIZE
    from tests.helpers.kafka import RECIPE, ROI, ROLE, disc_frames, running, wait_all_committed
    from tests.helpers.kafka import Topics as KafkaTopics

    assert secured_kafka.secure is not None
    secure = secured_kafka.secure.bootstrap
    tag = mechanism.lower().replace("-", "")
    topics = KafkaTopics(f"{tag}.frames", f"{tag}.verdicts", f"{tag}.dlq", f"{tag}.heat", tag)
    security = _secured(pki, secure, kafka_sasl_mechanism=mechanism)
    if mechanism == "SCRAM-SHA-512":  # with a client certificate, which the broker checks
        security |= {"kafka_ssl_certfile": pki.client_cert, "kafka_ssl_keyfile": pki.client_key}
    settings = trained.settings(**{**topics.settings(secure), **security})
    options = security_options(settings)
    specs = disc_frames(12, SIZE, seed=7, ng_every=4, tag=tag)
    frames = [CameraFrame(f.frame_id, f"part-{f.frame_id}", f.value, None) for f in specs]
    expected = {f.frame_id: f.expect for f in specs}
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="aiokafka")  # whatever another test set

    async def scenario():
        wanted = {topics.frames: 2, topics.verdicts: 2, topics.dlq: 1}
        assert sorted(await ensure_topics(secure, wanted, options=options)) == sorted(wanted)
        async with running(trained.consumer(settings), assigned=2) as task:
            camera = Camera(secure, topics.frames, RECIPE, ROLE, ROI, 0.1, options=options)
            reader = VerdictReader(secure, topics.verdicts, True, options=options)
            await camera.start()
            await reader.start()
            try:
                await camera.publish(frames)
                await reader.wait_for(set(expected), timeout_s=120)
                assert not task.done()
            finally:
                await camera.stop()
                await reader.stop()
            # read back over the PLAINTEXT listener: the same log
            offsets = await wait_all_committed(secured_kafka.bootstrap, topics.group, topics.frames)
        return reader.verdicts, offsets

    verdicts, offsets = asyncio.run(scenario())
    assert {fid: [v["verdict"] for v in vs] for fid, vs in verdicts.items()} == {
        fid: [verdict] for fid, verdict in expected.items()
    }
    assert sum(o or 0 for o in offsets.values()) == len(frames)  # all committed
    said = [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
    assert any(f"Authenticated as alice via {mechanism}" in line for line in said)
    assert not [line for line in said if SECRET in line]


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong password", "bdi: error: Kafka at {where} refused the SASL credentials of user "
                           "alice (SCRAM-SHA-256): "),
        ("other CA", "bdi: error: TLS: the broker's certificate at {where} is not trusted by "
                     "BDI_KAFKA_SSL_CAFILE"),
        ("plaintext", "bdi: error: Kafka at {where} is a TLS listener, but "
                      "BDI_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
    ],
)  # fmt: skip
def test_bdi_consume_names_what_the_broker_refused(secured_kafka, pki, tmp_path, case, expected):
    assert secured_kafka.secure is not None
    where = secured_kafka.secure.bootstrap
    settings = {
        "wrong password": _secured(pki, where, kafka_sasl_password="not-" + SECRET[::-1]),
        "other CA": _secured(pki, where, kafka_ssl_cafile=pki.other_ca),
        "plaintext": {"kafka_bootstrap": where},
    }[case]
    line = _one_error_line(_bdi_consume(tmp_path, settings))
    assert line.startswith(expected.format(where=where)), line


@pytest.mark.kafka
@pytest.mark.slow
def test_bdi_up_creates_topics_with_the_settings_and_names_a_refusal(secured_kafka, pki):
    from edge.cli.up import _create_topics

    assert secured_kafka.secure is not None
    where = secured_kafka.secure.bootstrap
    _create_topics(where, _settings(pki, where, kafka_topic_frames="up.frames"), 2)
    wrong = _settings(pki, where, kafka_sasl_password="wrong-password")
    with pytest.raises(KafkaSecurityError, match="refused the SASL credentials of user alice"):
        _create_topics(where, wrong, 2)
    local = load_settings(**{**_secured(pki, ""), "kafka_bootstrap": None})
    with pytest.raises(ValueError, match="the local broker of bdi up is plaintext"):
        _create_topics(secured_kafka.bootstrap, local, 2)
