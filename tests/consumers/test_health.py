"""The consumer's health port: JSON /health (503 until joined), Prometheus /metrics."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from consumers.health import HealthServer, metrics_text
from tests.helpers.images import SIZE
from tests.helpers.kafka import answered, disc_frames, produce, read_until, running


def _health(ready: bool) -> dict:
    return {"ready": ready, "verdicts": {"OK": 3, "NG": 1}, "batches": 2,
            "lag": {"f:0": 5}, "last_commit_at": 1.5}  # fmt: skip


def test_health_server_answers_over_http():
    state = {"ready": False}

    async def scenario():
        server = await HealthServer(lambda: _health(state["ready"]), "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{server.port}"
        try:
            async with httpx.AsyncClient() as http:
                not_yet = await http.get(f"{url}/health")
                state["ready"] = True
                ok = await http.get(f"{url}/health")
                metrics = await http.get(f"{url}/metrics")
                missing = await http.get(f"{url}/nope")
                post = await http.post(f"{url}/health")
        finally:
            await server.stop()
        return not_yet, ok, metrics, missing, post

    not_yet, ok, metrics, missing, post = asyncio.run(scenario())
    assert not_yet.status_code == 503 and not_yet.json()["ready"] is False
    assert ok.status_code == 200 and ok.json()["verdicts"] == {"OK": 3, "NG": 1}
    assert 'bdi_consumer_verdicts_total{verdict="NG"} 1' in metrics.text
    assert 'bdi_consumer_lag{partition="f:0"} 5' in metrics.text
    assert missing.status_code == 404 and post.status_code == 405


def test_metrics_text_without_a_commit_yet():
    text = metrics_text({**_health(False), "last_commit_at": None})
    assert "bdi_consumer_ready 0" in text and "last_commit" not in text


def test_metrics_show_each_models_size_and_the_cache_against_its_budget():
    cache = {"budget_mb": 512.0, "resident_mb": 71.5, "entries": 2, "max_entries": 16,
             "hits": 40, "loads": 3, "reloads": 1, "evictions": 1,
             "models_mb": {"disc-a/Master1/top": 35.75, "disc-a/Master1/side": 35.75}}  # fmt: skip
    text = metrics_text({**_health(True), "model_cache": cache})
    mib = 1024 * 1024
    assert f'bdi_consumer_model_bytes{{model="disc-a/Master1/top"}} {round(35.75 * mib)}' in text
    assert f"bdi_consumer_model_cache_bytes {round(71.5 * mib)}" in text
    assert f"bdi_consumer_model_cache_budget_bytes {512 * mib}" in text
    assert "bdi_consumer_model_cache_reloads_total 1" in text
    assert "bdi_consumer_model_cache_evictions_total 1" in text
    assert "model_cache" not in metrics_text(_health(True)), "none before the start"


@pytest.mark.kafka
@pytest.mark.slow
def test_consumer_health_reports_commits_lag_and_models(kafka_broker, make_topics, trained):
    topics = make_topics(partitions=2)
    settings = trained.settings(**topics.settings(kafka_broker.bootstrap))
    frames = disc_frames(20, SIZE, seed=7)

    async def scenario():
        consumer = trained.consumer(settings)
        before = consumer.health()
        async with running(consumer, assigned=2) as task:
            await produce(kafka_broker.bootstrap, topics.frames, frames)
            await read_until(kafka_broker.bootstrap, topics.verdicts,
                             answered({f.frame_id for f in frames}), watch=task)  # fmt: skip
            for _ in range(100):  # the commit follows the delivery acknowledgement
                if sum(consumer.health()["committed"].values()) == 20:
                    break
                await asyncio.sleep(0.05)
            during = consumer.health()
        return before, during, consumer.health()

    before, during, after = asyncio.run(scenario())
    assert before["ready"] is False and before["status"] == "stopped"
    assert during["ready"] is True and len(during["partitions"]) == 2
    assert sum(during["committed"].values()) == 20 and during["lag_total"] == 0
    assert during["last_commit_at"] is not None
    assert during["verdicts"] == {"OK": 18, "NG": 2}
    assert list(during["models"].values()) == [trained.version]
    assert after["ready"] is False
