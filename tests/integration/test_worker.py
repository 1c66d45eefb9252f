"""The whole pipeline on real processes: Kafka in, Faust worker, Redis state, Kafka out."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis.asyncio import Redis

from streamer.kafka import ensure_topics
from streamer.model.artifact import load_artifact
from streamer.settings import Settings
from streamer.state.codec import decode
from streamer.train.data import event_rows
from tests.conftest import make_panel
from tests.integration.workers import (
    FAUST_CLI,
    TopicReader,
    WorkerProcess,
    event_message,
    predictions_of,
    produce,
    store_for,
    worker_env,
)
from tests.reference import check_predictions, expected_by_entity

# Malformed events, each with the reason it must be dead-lettered with. Keys of real entities, so a
# bad event that touched state would show in the state checks.
BAD = [
    (b"e0001", b"this is not json", "invalid_json"),
    (b"e0002", b'{"unique_id": "e0002", "ds": "2020-01-05", "y": "12.5"}', "wrong_type"),
    (b"e0003", b'{"unique_id": "e0003", "y": 1.0}', "missing_field"),
    (b"e0004", b'{"unique_id": "e0004", "ds": "2020-01-05", "y": NaN}', "non_finite"),
    (
        b"e0005",
        b'{"unique_id": "e0005", "ds": "2020-01-05", "y": 1.0, "extra": 3}',
        "wrong_feature_count",
    ),
    (b"e0006", b"[1, 2]", "not_an_object"),
    (None, b'{"unique_id": "e0007", "ds": "2020-01-05", "y": 1.0}', "empty_key"),
    (b"e0008", b'{"unique_id": "e0009", "ds": "2020-01-05", "y": 1.0}', "key_mismatch"),
]


def settings_for(services: dict[str, str], ns: str, partitions: int = 4) -> Settings:
    """The settings of a test's topics (namespace ``ns``) on the test broker."""
    return Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": services["bootstrap"]},
            "topics": {
                "events": f"{ns}.events",
                "predictions": f"{ns}.predictions",
                "windows": f"{ns}.windows",
                "dead_letter": f"{ns}.dlq",
                "partitions": partitions,
            },
        }
    )


async def check_states(
    services: dict[str, str],
    ns: str,
    expected: dict,  # type: ignore[type-arg]
    **client: Any,
) -> None:
    """Every entity's state in Redis equals the offline nn.LSTM state over its events, to 1e-5.
    ``client``: what else the Redis client needs (a password, a CA bundle)."""
    store = store_for(services, ns, **client)
    try:
        raws = await store.get_many(list(expected))
    finally:
        await store.aclose()
    for uid, raw in zip(expected, raws, strict=True):
        assert raw is not None, uid
        rec = decode(raw)
        exp = expected[uid]
        assert rec.step == len(exp.ds), uid
        np.testing.assert_allclose(rec.h, exp.h, atol=1e-5, rtol=0, err_msg=uid)
        np.testing.assert_allclose(rec.c, exp.c, atol=1e-5, rtol=0, err_msg=uid)
        np.testing.assert_array_equal(rec.comp, exp.comp, err_msg=uid)


async def outbox_entries(services: dict[str, str], ns: str) -> int:
    """The predictions model ``ns`` keeps in its outboxes (a worker at rest trims them)."""
    redis = Redis.from_url(services["redis_url"])
    try:
        keys = [k async for k in redis.scan_iter(f"streamer-outbox:{ns}:*")]
        return sum([await redis.zcard(k) for k in keys])
    finally:
        await redis.aclose()


@pytest.mark.integration
@pytest.mark.parametrize("client", ["aiokafka", "confluent", "faust"])
@pytest.mark.parametrize("restart", [False, True], ids=["one-worker", "stop-halfway-and-restart"])
async def test_every_event_gets_one_prediction_equal_to_nn_lstm(
    redis_kind: dict[str, str], ns: str, model_dir: Path, tmp_path: Path, restart: bool, client: str
) -> None:
    """Against a single Redis and against a Redis Cluster (``redis_kind``), on both Kafka
    clients of the default engine and on the Faust engine (its worker started by Faust's own
    command line, then by ``streamer worker --engine faust``)."""
    services = redis_kind
    art = load_artifact(model_dir)
    df = make_panel(300, 5, 30, seed=11)
    expected = expected_by_entity(art.model, df)
    msgs = [event_message(ev) for ev in event_rows(df)]  # interleaved: time order across entities
    for i, (key, value, _) in enumerate(BAD):
        msgs.insert(len(msgs) * (i + 1) // (len(BAD) + 1), (key, value))  # type: ignore[arg-type]
    settings = settings_for(services, ns)
    await ensure_topics(settings)
    await produce(services["bootstrap"], settings.topics.events, msgs)

    if client == "faust":
        env = worker_env(services, ns, model_dir, STREAMER_ENGINE="faust")
        env.pop("STREAMER_KAFKA__CLIENT", None)
        worker = WorkerProcess(env, tmp_path / "worker1.log", FAUST_CLI)
    else:
        env = worker_env(services, ns, model_dir, STREAMER_KAFKA__CLIENT=client)
        worker = WorkerProcess(env, tmp_path / "worker1.log")
    async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
        try:
            if restart:
                await out.read_until(len(df) // 2, timeout=120, proc=worker)
                assert worker.stop(signal.SIGTERM) == 0, worker.tail()
                assert len(out.records) < len(df), "the worker finished before it was stopped"
                worker = WorkerProcess(env, tmp_path / "worker2.log")
            await out.read_until(len(df), timeout=180, proc=worker)
            await out.drain(quiet_s=3)  # duplicates, if any, would arrive now
        finally:
            code = worker.stop()
        assert code == 0, worker.tail()
        preds = predictions_of(out.records)

    ids = Counter((p.partition, p.offset) for p in preds)
    assert len(preds) == len(df), f"{len(preds)} predictions for {len(df)} events"
    assert max(ids.values()) == 1, "an event got two predictions"
    per_entity = Counter(p.unique_id for p in preds)
    assert per_entity == Counter(df["unique_id"])
    check_predictions(preds, expected)
    assert all(r.key == p.unique_id.encode() for r, p in zip(out.records, preds, strict=True))
    await check_states(services, ns, expected)
    if services.get("redis_cluster") != "1":  # (a cluster keeps them inside the states)
        assert await outbox_entries(services, ns) == 0, "kept predictions left at rest"

    async with TopicReader(services["bootstrap"], settings.topics.dead_letter) as dlq:
        await dlq.read_until(len(BAD), timeout=30)
        await dlq.drain(quiet_s=1)
    got = {(r.key, r.value): dict(r.headers)["streamer-reason"].decode() for r in dlq.records}
    assert got == {(k, v): reason for k, v, reason in BAD}


@pytest.mark.integration
async def test_worker_refuses_to_start_without_a_model(
    services: dict[str, str], ns: str, tmp_path: Path
) -> None:
    env = worker_env(services, ns, tmp_path / "missing-model")
    worker = WorkerProcess(env, tmp_path / "w.log")
    code = await asyncio.to_thread(worker.proc.wait, 60)
    worker.stop()
    assert code == 1
    text = worker.log.read_text()
    assert "is not a model artifact" in text and "Traceback" not in text


def test_bad_json_fixture_is_really_bad() -> None:
    """Guards the fixture above: each BAD value is refused by the decoder for the stated reason."""
    from streamer.schemas import DeadLetter, decode_event

    for key, value, reason in BAD:
        r = decode_event(key, value, 0, 0)
        assert isinstance(r, DeadLetter) and r.reason == reason, (value, r)
