"""Producers that disagree on the partitioner, through a real worker on the real broker and Redis.

librdkafka-based clients and kcat hash keys with CRC32 (``consistent_random``), Java clients and
streamer with murmur2: when both write one topic, an entity's events land on two partitions. Each
entity must then be served from one partition only (its first), its events on the other
dead-lettered as ``partition_conflict``: every event gets a prediction or a dead letter, none is
applied twice or out of order, and every state equals the module over its entity's served events.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from aiokafka import AIOKafkaProducer

from streamer.kafka import ensure_topics
from streamer.kafka.partitioning import partitions_of
from streamer.model.artifact import load_artifact
from streamer.train.data import event_rows
from tests.conftest import make_panel
from tests.integration.test_worker import check_states, settings_for
from tests.integration.workers import (
    TopicReader,
    WorkerProcess,
    event_message,
    predictions_of,
    worker_env,
)
from tests.reference import check_predictions, expected_by_entity

pytestmark = pytest.mark.integration


async def test_an_entity_on_two_partitions_is_served_from_one_and_nothing_is_lost(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    df = make_panel(60, 10, 25, seed=41)
    settings = settings_for(services, ns, partitions=4)
    await ensure_topics(settings)
    rows = list(event_rows(df))
    keys = [str(r["unique_id"]).encode() for r in rows]
    murmur = partitions_of(keys, 4).tolist()
    crc = [zlib.crc32(k) % 4 for k in keys]
    rng = random.Random(8)
    # each event from one of two producers, chosen at random: the CRC32 one for a third
    chosen = [c if rng.random() < 1 / 3 else m for m, c in zip(murmur, crc, strict=True)]
    producer = AIOKafkaProducer(bootstrap_servers=services["bootstrap"], acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = []
        for row, part in zip(rows, chosen, strict=True):
            key, value = event_message(row)
            sent.append(await producer.send(settings.topics.events, value, key=key, partition=part))
        metas = await asyncio.gather(*sent)
    finally:
        await producer.stop()
    where = {(m.partition, m.offset): i for i, m in enumerate(metas)}
    split = {k for k, m, c in zip(keys, murmur, crc, strict=True) if m != c}
    assert len(split) > 20, "most entities must have events on two partitions"

    w = WorkerProcess(worker_env(services, ns, model_dir), tmp_path / "w.log")
    try:
        async with (
            TopicReader(services["bootstrap"], settings.topics.predictions) as out,
            TopicReader(services["bootstrap"], settings.topics.dead_letter) as dlq,
        ):
            deadline = asyncio.get_running_loop().time() + 180
            while len(out.records) + len(dlq.records) < len(rows):
                assert asyncio.get_running_loop().time() < deadline, "outputs missing"
                await out.read_until(len(out.records) + 1, timeout=1, proc=w)
                await dlq.read_until(len(dlq.records) + 1, timeout=0.3, proc=w)
            await out.drain(quiet_s=2)
            await dlq.drain(quiet_s=1)
    finally:
        assert w.stop() == 0, w.tail()

    preds = {(p.partition, p.offset): p for p in predictions_of(out.records)}
    dead = {}
    for r in dlq.records:
        headers = dict(r.headers)
        src = headers["streamer-source"].decode().rsplit("/", 2)
        dead[(int(src[1]), int(src[2]))] = headers["streamer-reason"].decode()
    assert set(dead.values()) <= {"partition_conflict"}, Counter(dead.values())
    assert not set(preds) & set(dead), "an event both predicted and dead-lettered"
    assert set(preds) | set(dead) == set(where), "every event: a prediction or a dead letter"
    # each entity served from one partition; the dead letters are exactly its other partition's
    served: dict[str, int] = {}
    for (part, _), p in preds.items():
        assert served.setdefault(p.unique_id, part) == part, p.unique_id
    for ident in dead:
        uid = keys[where[ident]].decode()
        assert served.get(uid) != ident[0], (uid, ident)
    assert any(uid.encode() in split for uid in served) and dead
    # predictions and states equal the module run over each entity's served events, in order
    kept = [i for (part, off), i in where.items() if served.get(keys[i].decode()) == part]
    sub = pd.DataFrame([rows[i] for i in sorted(kept)])
    sub["ds"] = pd.to_datetime(sub["ds"])
    expected = expected_by_entity(load_artifact(model_dir).model, sub)
    assert check_predictions(list(preds.values()), expected) == len(preds)
    await check_states(services, ns, expected)
