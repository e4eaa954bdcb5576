"""S12: upload limits against a real ``bdi serve`` process (its memory read from /proc):
an announced oversized body, a chunked body without length, 10,000 file parts, 10,000
fields, huge part headers (under and over the bound), and slow bodies. Meanwhile /infer
latency is measured on another connection. Must hold: 413 / 400 answers, never 5xx, bounded
memory. Latencies are recorded, not asserted.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from consumers.broker import free_port
from tests.helpers.api import IDS, files, id_parts, multipart, post_head, read_until_closed
from tests.helpers.images import ok_png
from tests.helpers.probes import percentiles_ms, proc_memory
from tests.helpers.settings import TINY

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BOUND_MB = 8
MEMORY_BOUND_MIB = 200  # the body bound is 8 MiB; buffering a 200 MB body would show
SLOW_S = 4.0
BODY_TIMEOUT_S = 8.0  # BDI_BODY_TIMEOUT_S: past the slow valid upload's 4 s at 100 B/s
SLOWLORIS = 32  # connections trickling their bodies at the same time


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
    env.update({f"BDI_{k.upper()}": str(v) for k, v in TINY.items()})
    env.update(BDI_MODELS_DIR=str(tmp_path / "models"), BDI_MAX_UPLOAD_MB=str(BOUND_MB),
               BDI_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S))  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "serve", "--port", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "bdi serve did not start"
        time.sleep(0.2)
    yield proc, url, port
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    log.close()


def raw(port: int, head: bytes, chunks, *, pause_s: float = 0.0) -> tuple[str, int]:
    """Send ``head`` then ``chunks`` until the server answers; ``(reply, bytes sent)``."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # answered before the body was complete
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            if pause_s:
                time.sleep(pause_s)
        sock.settimeout(30)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            reply += data
    return reply.decode("latin-1"), sent


def chunked(first: bytes, rest) -> Iterator[bytes]:
    """HTTP/1.1 chunked transfer coding of ``first`` then ``rest`` (never terminated: the
    server must answer before the end)."""
    for data in itertools.chain([first], rest):
        if data:
            yield b"%x\r\n" % len(data) + data + b"\r\n"


def status(reply: str) -> int:
    return int(reply.split(" ", 2)[1]) if reply.startswith("HTTP/1.1 ") else 0


def infer_latencies(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(n):
            t0 = time.perf_counter()
            r = http.post("/infer", data=IDS, files={"image": ("f.png", ok_png(50 + i % 5))})
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return out


def test_upload_limits_and_slow_bodies(server, report):
    proc, url, port = server
    with httpx.Client(base_url=url, timeout=120) as http:
        r = http.post("/fit_ok", data={**IDS, "mm_per_px": "0.1"},
                      files=files("images", [ok_png(s) for s in range(4)]))  # fmt: skip
        assert r.status_code == 200, r.text
    infer_latencies(url, 3)  # warm
    baseline = infer_latencies(url, 20)
    memory_before = proc_memory(proc.pid)
    answers: dict[str, int] = {}
    sent: dict[str, int] = {}

    reply, _ = raw(port, post_head("/infer", 100 * 2**20), [])
    answers["announced_100MB"] = status(reply)

    image = b'Content-Disposition: form-data; name="image"; filename="x.png"'
    opening = multipart(id_parts())[: -len(b"--BDIBOUNDARY--\r\n")]
    body_start = opening + b"--BDIBOUNDARY\r\n" + image + b"\r\n\r\n"
    reply, sent["chunked_200MB"] = raw(
        port,
        post_head("/infer", None),
        chunked(body_start, (b"\x89PNG" * 16384 for _ in range(200 * 16))),
    )  # 200 MiB of one part
    answers["chunked_200MB"] = status(reply)

    part = b'Content-Disposition: form-data; name="images"; filename="a.png"'
    body = multipart([*id_parts(), *[(part, b"0123456789")] * 10_000])
    answers["10k_file_parts"] = status(raw(port, post_head("/fit_ok", len(body)), [body])[0])
    field = b'Content-Disposition: form-data; name="f"'
    body = multipart([*id_parts(), *[(field, b"v")] * 10_000])
    answers["10k_fields"] = status(raw(port, post_head("/fit_ok", len(body)), [body])[0])

    for name, size in (("6MB_part_header", 6 * 2**20), ("20MB_part_header", 20 * 2**20)):
        head = image + b"\r\nX-Junk: " + b"j" * size
        body = multipart([*id_parts(), (head, ok_png(1))])
        pieces = (body[i : i + 2**20] for i in range(0, len(body), 2**20))
        reply, sent[name] = raw(port, post_head("/infer", None), chunked(b"", pieces))
        answers[name] = status(reply)
    memory_after_attacks = proc_memory(proc.pid)

    # slow bodies: SLOWLORIS connections trickle, one of them a valid /infer upload
    valid = multipart([*id_parts(), (image + b"\r\nContent-Type: image/png", ok_png(2))])
    slow_replies: list[str] = []
    idle: list[socket.socket] = []
    stalled_at = time.monotonic()
    for _ in range(SLOWLORIS - 1):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(post_head("/infer", len(valid)) + valid[:100])
        idle.append(sock)
    trickle = int(SLOW_S / 0.01)

    def slow_upload() -> None:
        chunks = [valid[i : i + 1] for i in range(trickle)] + [valid[trickle:]]
        slow_replies.append(raw(port, post_head("/infer", len(valid)), chunks, pause_s=0.01)[0])

    uploader = threading.Thread(target=slow_upload)
    uploader.start()
    during = infer_latencies(url, 20)
    uploader.join(60)
    still_open = sum(1 for s in idle if not select.select([s], [], [], 0)[0])
    # the stalled bodies' deadline: each is answered 408 and closed, none is left open
    cut, cut_after = 0, 0.0
    for sock in idle:
        reply, closed = read_until_closed(sock, stalled_at + BODY_TIMEOUT_S + 10)
        if reply.startswith("HTTP/1.1 408") and "request_timeout" in reply and closed:
            cut += 1
            cut_after = max(cut_after, time.monotonic() - stalled_at)
        sock.close()
    memory_after = proc_memory(proc.pid)
    answers["slow_valid_upload"] = status(slow_replies[0]) if slow_replies else 0
    growth = memory_after["peak_mib"] - memory_before["rss_mib"]
    expected = {"announced_100MB": {413}, "chunked_200MB": {413}, "10k_file_parts": {400},
                "10k_fields": {400}, "6MB_part_header": {400, 413},
                "20MB_part_header": {400, 413}, "slow_valid_upload": {200}}  # fmt: skip
    report(
        "S12", holds=all(answers[k] in v for k, v in expected.items())
        and growth < MEMORY_BOUND_MIB,
        answers=answers, body_bytes_sent_before_answer=sent, rss_before_mib=memory_before[
            "rss_mib"], rss_after_attacks_mib=memory_after_attacks["rss_mib"],
        rss_after_mib=memory_after["rss_mib"], peak_mib=memory_after["peak_mib"],
        growth_mib=growth, infer_baseline=percentiles_ms(baseline),
        infer_during_slow_uploads=percentiles_ms(during), slow_connections=SLOWLORIS,
        slow_connections_still_open_after_s=(still_open, SLOW_S),
        stalled_bodies_cut_408=(cut, len(idle)), last_cut_after_s=round(cut_after, 1),
        body_timeout_s=BODY_TIMEOUT_S,
    )  # fmt: skip
    assert all(code < 500 for code in answers.values()), answers
    for name, codes in expected.items():
        assert answers[name] in codes, (name, answers)
    assert sent["chunked_200MB"] < 4 * BOUND_MB * 2**20, sent  # cut near the bound
    assert growth < MEMORY_BOUND_MIB, (memory_before, memory_after)
    assert cut == len(idle), (cut, len(idle))
