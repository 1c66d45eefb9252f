"""Faults inflicted for real: kill -9, partitions moving between workers, Redis and Kafka restarts.

Every test streams thousands of events of hundreds of entities through real worker processes and
then checks the promise: every entity's state equals the offline nn.LSTM state over exactly its
events, and every event has a prediction equal to the offline one (at least once; duplicates carry
the same values and the same event identity). In exactly-once mode a read_committed consumer sees
exactly one prediction per event.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from streamer.kafka import ensure_topics
from streamer.model.artifact import load_artifact
from streamer.train.data import event_rows
from tests.conftest import SERVICES, make_panel, services_env
from tests.integration.test_metrics import announced, labelled, scrape, value
from tests.integration.test_worker import check_states, settings_for
from tests.integration.workers import (
    TopicReader,
    WorkerProcess,
    event_message,
    predictions_of,
    produce,
    worker_env,
)
from tests.reference import check_predictions, expected_by_entity

pytestmark = pytest.mark.integration

FAST = {"STREAMER_KAFKA__SESSION_TIMEOUT_S": "3", "STREAMER_BATCH__MAX_SIZE": "50"}


def eos_env(
    services: dict[str, str], ns: str, model_dir: Path, worker: str, **extra: str
) -> dict[str, str]:
    """A fast-failing exactly-once worker whose transactional id is ``worker``."""
    return worker_env(
        services,
        ns,
        model_dir,
        **FAST,
        STREAMER_PROCESSING_GUARANTEE="exactly_once",
        STREAMER_KAFKA__TRANSACTIONAL_ID=worker,
        **extra,
    )


async def stream_panel(services: dict[str, str], ns: str, entities: int, seed: int):  # type: ignore[no-untyped-def]
    df = make_panel(entities, 10, 40, seed=seed)
    settings = settings_for(services, ns)
    await ensure_topics(settings)
    await produce(
        services["bootstrap"], settings.topics.events, [event_message(ev) for ev in event_rows(df)]
    )
    return df, settings


async def verify(
    services: dict[str, str], ns: str, model_dir: Path, df, records, *, exactly_once: bool
) -> int:  # type: ignore[no-untyped-def]
    expected = expected_by_entity(load_artifact(model_dir).model, df)
    preds = predictions_of(records)
    by_id = defaultdict(list)
    for p in preds:
        by_id[(p.partition, p.offset)].append(p)
    assert len(by_id) == len(df), f"{len(by_id)} events with a prediction, {len(df)} events"
    for dupes in by_id.values():
        assert all(d == dupes[0] for d in dupes), f"a duplicate differs: {dupes}"
    if exactly_once:
        assert len(preds) == len(df), f"{len(preds) - len(df)} duplicates seen by read_committed"
    check_predictions([d[0] for d in by_id.values()], expected)
    await check_states(services, ns, expected)
    return len(preds) - len(df)


@pytest.mark.parametrize(
    ("engine", "model"),
    [
        ("streamer", "single"),
        ("faust", "single"),
        ("streamer", "ensemble"),
        ("streamer", "seasonal"),
        ("streamer", "two-seasons"),
    ],
)
async def test_kill_9_at_random_points_then_restart(
    services: dict[str, str],
    ns: str,
    model_dir: Path,
    ensemble_model_dir: Path,
    seasonal_model_dir: Path,
    two_season_model_dir: Path,
    tmp_path: Path,
    engine: str,
    model: str,
) -> None:
    """(``ensemble``: three members served as one model, with intervals; ``seasonal``: level and
    seasonal components in the states; ``two-seasons``: and a second season's.)"""
    model_dir = {
        "ensemble": ensemble_model_dir,
        "seasonal": seasonal_model_dir,
        "two-seasons": two_season_model_dir,
    }.get(model, model_dir)
    df, settings = await stream_panel(services, ns, 200, seed=21)
    env = worker_env(services, ns, model_dir, **FAST, STREAMER_ENGINE=engine)
    rng = random.Random(5)
    kill_points = sorted(rng.sample(range(300, len(df) - 300), 4))
    async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
        for i, point in enumerate(kill_points):
            w = WorkerProcess(env, tmp_path / f"w{i}.log")
            await out.read_until(point, timeout=120, proc=w)
            await asyncio.sleep(rng.uniform(0, 0.3))  # land anywhere inside a batch
            w.kill()
        w = WorkerProcess(env, tmp_path / "final.log")
        try:
            # The last worker killed may have finished the stream; this one still takes over.
            await w.logged("partitions assigned")
            while len({(p.partition, p.offset) for p in predictions_of(out.records)}) < len(df):
                await out.read_until(len(out.records) + 1, timeout=60, proc=w)
            await out.drain(quiet_s=2)
        finally:
            assert w.stop() == 0, w.tail()
        dupes = await verify(services, ns, model_dir, df, out.records, exactly_once=False)
    entities = df.unique_id.nunique()
    print(f"kill points {kill_points}: {len(df)} events, {entities} entities, {dupes} duplicates")


@pytest.mark.parametrize("engine", ["streamer", "faust"])
async def test_two_workers_partitions_move_while_they_start_and_die(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path, engine: str
) -> None:
    df = make_panel(200, 10, 40, seed=22)
    settings = settings_for(services, ns)
    await ensure_topics(settings)
    env = worker_env(services, ns, model_dir, **FAST, STREAMER_ENGINE=engine)
    n = len(df)
    msgs = [event_message(ev) for ev in event_rows(df)]
    # Events keep coming while the workers start, join, die and leave: partitions move under load.
    feeding = asyncio.create_task(
        produce(services["bootstrap"], settings.topics.events, msgs, rate=300)
    )
    async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
        a = WorkerProcess(env, tmp_path / "a1.log")
        await out.read_until(n // 6, timeout=120, proc=a)
        b = WorkerProcess(env, tmp_path / "b1.log")  # joins: partitions move to it
        await b.logged("partitions assigned")
        await a.logged("partitions revoked")
        await out.read_until(2 * n // 6, timeout=120, proc=a)
        a.kill()  # b takes everything over
        await out.read_until(3 * n // 6, timeout=120, proc=b)
        a = WorkerProcess(env, tmp_path / "a2.log")  # rejoins
        await a.logged("partitions assigned")
        await out.read_until(4 * n // 6, timeout=120, proc=b)
        assert b.stop(signal.SIGTERM) == 0, b.tail()  # leaves cleanly: a takes over again
        try:
            while len({(p.partition, p.offset) for p in predictions_of(out.records)}) < n:
                await out.read_until(len(out.records) + 1, timeout=120, proc=a)
            await out.drain(quiet_s=2)
        finally:
            assert a.stop() == 0, a.tail()
        await feeding
        await verify(services, ns, model_dir, df, out.records, exactly_once=False)


def _services(*args: str) -> None:
    subprocess.run(
        [str(SERVICES), *args], env=services_env(), check=True, capture_output=True, timeout=300
    )


async def redis_outage_mid_stream(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path, port: str, service: str
) -> str:
    """Stream a panel through a worker, shut the Redis on ``port`` down a third of the way in
    (SHUTDOWN SAVE writes its data to disk), check that predictions stall, start ``service`` again
    (which loads the data), and check that nothing was lost or doubled. The worker's metrics as
    scraped during the outage."""
    df, settings = await stream_panel(services, ns, 150, seed=int(port) % 97)
    env = worker_env(services, ns, model_dir, **FAST)
    async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
        w = WorkerProcess(env, tmp_path / "w.log")
        try:
            await out.read_until(len(df) // 3, timeout=120, proc=w)
            cluster = services.get("redis_cluster") == "1"
            metrics_url = (await announced(ns, services["redis_url"], cluster=cluster)).metrics_url
            assert metrics_url is not None
            subprocess.run(
                ["redis-cli", "-p", port, "shutdown", "save"], capture_output=True, timeout=30
            )
            try:
                # What was produced before the shutdown (the reader lags the worker), and the
                # batches already saved, still arrive; then nothing while Redis is away.
                await out.drain(quiet_s=1.0)
                stalled = len(out.records)
                await asyncio.sleep(5)
                await out.drain(quiet_s=0.5)
                assert len(out.records) - stalled < 100, "predictions went on without Redis"
                during = await asyncio.to_thread(scrape, metrics_url)
            finally:
                await asyncio.to_thread(_services, "up", service)  # whatever failed above
            while len({(p.partition, p.offset) for p in predictions_of(out.records)}) < len(df):
                await out.read_until(len(out.records) + 1, timeout=120, proc=w)
            await out.drain(quiet_s=2)
        finally:
            assert w.stop() == 0, w.tail()
        assert "state store unavailable" in w.log.read_text()
        await verify(services, ns, model_dir, df, out.records, exactly_once=False)
    return during


async def test_redis_restart_mid_stream_loses_nothing(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    port = services["redis_url"].rsplit(":", 1)[1].split("/")[0]
    during = await redis_outage_mid_stream(services, ns, model_dir, tmp_path, port, "redis")
    # The retries show in the metrics while the outage lasts, and so does the lag.
    assert value(during, "streamer_redis_retries_total") > 0
    assert sum(labelled(during, "streamer_consumer_lag").values()) > 0, during


async def test_a_redis_cluster_node_restart_mid_stream_loses_nothing(
    redis_cluster: dict[str, str], ns: str, seasonal_model_dir: Path, tmp_path: Path
) -> None:
    """One of the cluster's three primaries goes away mid-stream: batches wait (every batch has
    keys on it), then the node comes back with its slots and data and the worker goes on, from
    the cluster's new map, losing and doubling nothing. (A model with seasonal components: a
    cluster's records keep them beside the kept predictions.)"""
    port = redis_cluster["cluster_ports"].split(",")[1]
    during = await redis_outage_mid_stream(
        redis_cluster, ns, seasonal_model_dir, tmp_path, port, "redis-cluster"
    )
    assert value(during, "streamer_redis_retries_total") > 0


async def test_kafka_broker_restart_mid_stream_loses_nothing(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    df, settings = await stream_panel(services, ns, 150, seed=24)
    env = worker_env(services, ns, model_dir, **FAST)
    w = WorkerProcess(env, tmp_path / "w.log")
    try:
        async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
            await out.read_until(len(df) // 3, timeout=120, proc=w)
        await asyncio.to_thread(_services, "down", "kafka")
        await asyncio.sleep(3)
        await asyncio.to_thread(_services, "up", "kafka")
        async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
            while len({(p.partition, p.offset) for p in predictions_of(out.records)}) < len(df):
                await out.read_until(len(out.records) + 1, timeout=180, proc=w)
            await out.drain(quiet_s=2)
    finally:
        assert w.stop() == 0, w.tail()
    await verify(services, ns, model_dir, df, out.records, exactly_once=False)


async def test_exactly_once_read_committed_sees_one_prediction_per_event_across_kills(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    df, settings = await stream_panel(services, ns, 200, seed=25)
    env = worker_env(
        services,
        ns,
        model_dir,
        **FAST,
        STREAMER_PROCESSING_GUARANTEE="exactly_once",
        STREAMER_KAFKA__TRANSACTIONAL_ID="worker-1",  # stable: a restart fences its dead self
    )
    rng = random.Random(9)
    points = sorted(rng.sample(range(300, len(df) - 300), 3))
    async with TopicReader(
        services["bootstrap"], settings.topics.predictions, "read_committed"
    ) as out:
        for i, point in enumerate(points):
            w = WorkerProcess(env, tmp_path / f"w{i}.log")
            await out.read_until(point, timeout=120, proc=w)
            await asyncio.sleep(rng.uniform(0, 0.3))
            w.kill()
        w = WorkerProcess(env, tmp_path / "final.log")
        try:
            await w.logged("partitions assigned")
            await out.read_until(len(df), timeout=180, proc=w)
            await out.drain(quiet_s=3)
        finally:
            assert w.stop() == 0, w.tail()
        await verify(services, ns, model_dir, df, out.records, exactly_once=True)


async def test_exactly_once_while_partitions_move_between_two_workers(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    df, settings = await stream_panel(services, ns, 200, seed=26)
    n = len(df)

    def env(worker: str) -> dict[str, str]:
        return eos_env(services, ns, model_dir, worker)

    async with TopicReader(
        services["bootstrap"], settings.topics.predictions, "read_committed"
    ) as out:
        a = WorkerProcess(env("a"), tmp_path / "a1.log")
        await out.read_until(n // 5, timeout=120, proc=a)
        b = WorkerProcess(env("b"), tmp_path / "b1.log")  # joins: partitions move to it
        await out.read_until(2 * n // 5, timeout=120, proc=a)
        a.kill()
        await out.read_until(3 * n // 5, timeout=120, proc=b)
        a = WorkerProcess(env("a"), tmp_path / "a2.log")  # rejoins, fencing its dead self
        await out.read_until(4 * n // 5, timeout=120, proc=b)
        assert b.stop(signal.SIGTERM) == 0, b.tail()
        try:
            await a.logged("partitions assigned")
            await out.read_until(n, timeout=180, proc=a)
            await out.drain(quiet_s=3)
        finally:
            assert a.stop() == 0, a.tail()
        await verify(services, ns, model_dir, df, out.records, exactly_once=True)


async def test_exactly_once_a_zombie_that_wakes_after_its_session_cannot_commit(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    """A worker frozen mid-stream (SIGSTOP) past its session timeout is a zombie: the group gives
    its partitions to the other worker, which goes on from the last commit. When the zombie wakes
    up (SIGCONT), whatever it had in flight (a transaction, the batches it had fetched) must not
    commit: its transactions carry the group generation it had (KIP-447), which the broker refuses.
    A read_committed consumer still sees exactly one prediction per event. On confluent-kafka,
    which sends the group metadata with the offsets; aiokafka cannot, and fences a zombie by
    transactional id only (see the README's Guarantees)."""
    df, settings = await stream_panel(services, ns, 200, seed=27)
    n = len(df)

    def env(worker: str) -> dict[str, str]:
        return eos_env(services, ns, model_dir, worker, STREAMER_KAFKA__CLIENT="confluent")

    async with TopicReader(
        services["bootstrap"], settings.topics.predictions, "read_committed"
    ) as out:
        a = WorkerProcess(env("a"), tmp_path / "a.log")
        await out.read_until(n // 10, timeout=120, proc=a)
        b = WorkerProcess(env("b"), tmp_path / "b.log")
        try:
            await b.logged("partitions assigned")
            for k in range(2):
                await out.read_until((3 + 3 * k) * n // 10, timeout=120, proc=a)
                a.proc.send_signal(signal.SIGSTOP)  # busy with the backlog: mid-transaction
                try:
                    # past the 3 s session: b takes a's partitions and goes on without it
                    await asyncio.sleep(5)
                    await out.read_until(len(out.records) + 50, timeout=60, proc=b)
                finally:
                    a.proc.send_signal(signal.SIGCONT)
                await asyncio.sleep(2)  # the zombie wakes up, fails to commit, rejoins
            await out.read_until(n, timeout=180, proc=b)
            await out.drain(quiet_s=3)
        finally:
            assert b.stop() == 0, b.tail()
            assert a.stop() == 0, a.tail()
        await verify(services, ns, model_dir, df, out.records, exactly_once=True)
