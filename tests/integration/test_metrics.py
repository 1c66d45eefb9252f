"""A real worker's Prometheus endpoint after a replay: what it counted is what happened."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from streamer.kafka import ensure_topics
from streamer.model.artifact import load_artifact
from streamer.ops.presence import WorkerInfo, live_workers
from streamer.settings import Settings
from streamer.state import redis_client
from streamer.train.data import event_rows
from tests.conftest import make_panel
from tests.integration.test_worker import BAD, settings_for
from tests.integration.workers import TopicReader, WorkerProcess, event_message, produce, worker_env

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def labelled(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def redis_at(url: str, cluster: bool = False) -> Redis:
    return redis_client(Settings.model_validate({"redis": {"url": url, "cluster": cluster}}))


async def announced(
    app_id: str, redis_url: str, timeout: float = 30, *, cluster: bool = False
) -> WorkerInfo:
    """The worker of ``app_id``, once it announced itself in Redis (or a Redis Cluster) with its
    metrics URL."""
    client = redis_at(redis_url, cluster)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = await live_workers(client, app_id)
            if workers and workers[0].metrics_url:
                return workers[0]
            await asyncio.sleep(0.2)
        raise AssertionError("the worker never announced itself in Redis")
    finally:
        await client.aclose()


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["streamer", "faust"])
async def test_metrics_count_what_the_worker_did(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path, engine: str
) -> None:
    art = load_artifact(model_dir)
    df = make_panel(300, 5, 30, seed=11)
    msgs = [event_message(ev) for ev in event_rows(df)]
    for i, (key, val, _) in enumerate(BAD):
        msgs.insert(len(msgs) * (i + 1) // (len(BAD) + 1), (key, val))  # type: ignore[arg-type]
    settings = settings_for(services, ns)
    await ensure_topics(settings)
    await produce(services["bootstrap"], settings.topics.events, msgs)

    env = worker_env(services, ns, model_dir, STREAMER_ENGINE=engine)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        info = await announced(ns, services["redis_url"])
        assert info.model_version == art.version and info.pid == worker.proc.pid
        assert info.metrics_url is not None
        async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
            await out.read_until(len(df), timeout=120, proc=worker)
        # Counters move once a batch is committed, just after its predictions are out.
        deadline = time.monotonic() + 30
        while True:
            samples = await asyncio.to_thread(scrape, info.metrics_url)
            done = value(samples, "streamer_events_total") == len(msgs)
            lag = labelled(samples, "streamer_consumer_lag")
            if (done and lag and not any(lag.values())) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
    finally:
        assert worker.stop() == 0, worker.tail()

    assert value(samples, "streamer_events_total") == len(msgs)
    assert value(samples, "streamer_predictions_total") == len(df)
    assert value(samples, "streamer_reemitted_total") == 0
    dead = {
        dict(k)["reason"]: v for k, v in labelled(samples, "streamer_dead_letters_total").items()
    }
    assert dead == dict(Counter(reason for _, _, reason in BAD))

    batches = value(samples, "streamer_batches_total")
    assert batches >= 1
    assert value(samples, "streamer_batch_size_count") == batches
    assert value(samples, "streamer_batch_size_sum") == len(msgs)
    if engine == "streamer":  # (Faust's noack_take does not tell when a batch's first event came)
        assert value(samples, "streamer_batch_wait_seconds_count") >= batches
    # Every event has its latency; all of them were produced before the worker started.
    assert value(samples, "streamer_latency_seconds_count") == len(msgs)
    assert value(samples, "streamer_latency_seconds_sum") > 0
    assert value(samples, "streamer_latency_seconds_bucket", le="+Inf") == len(msgs)
    assert value(samples, "streamer_delivery_seconds_count") == batches
    assert value(samples, "streamer_step_seconds_count") >= 1
    assert value(samples, "streamer_redis_seconds_count", op="read") >= 1
    assert value(samples, "streamer_redis_seconds_count", op="write") >= 1

    partitions = settings.topics.partitions
    assert value(samples, "streamer_assigned_partitions") == partitions
    assert set(dict(k)["partition"] for k in lag) == {str(p) for p in range(partitions)}
    assert not any(lag.values()), lag

    # Every entity's first read missed the cache; the cache holds every entity now.
    entities = df["unique_id"].nunique()
    assert value(samples, "streamer_cache_misses_total") >= entities
    assert value(samples, "streamer_cache_entities") == entities
    assert value(samples, "streamer_cache_bytes") > 0
    assert value(samples, "streamer_state_resets_total") == 0
    assert value(samples, "streamer_rejected_writes_total") == 0
    assert value(samples, "streamer_model_info", version=art.version) == 1
    assert value(samples, "streamer_model_switches_total") == 0
    worker_info = labelled(samples, "streamer_worker_info")
    assert [dict(k)["app_id"] for k in worker_info] == [ns]
    for name in ("redis_retries", "kafka_retries", "commit_failures"):
        assert value(samples, f"streamer_{name}_total") == 0

    # A worker that stopped withdrew its announcement.
    client = redis_at(services["redis_url"])
    try:
        assert await live_workers(client, ns) == []
    finally:
        await client.aclose()
