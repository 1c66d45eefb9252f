"""A next-event model through real processes: categorical events on Kafka, a worker killed with
SIGKILL at random points, states in Redis; every event's top values, probabilities, surprise and
rank equal the module's over the entity's whole sequence, and duplicates (after a crash) equal the
first emission."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamer.kafka import ensure_topics
from streamer.model.artifact import save_artifact
from streamer.state.codec import decode
from streamer.train.nextevent import TokenSeries, offline_served
from tests.integration.test_faults import FAST
from tests.integration.test_worker import settings_for
from tests.integration.workers import (
    TopicReader,
    WorkerProcess,
    predictions_of,
    produce,
    store_for,
    worker_env,
)
from tests.unit.test_nextevent import next_model

pytestmark = pytest.mark.integration


def token_events(entities: int, length: int, seed: int) -> list[dict[str, object]]:
    """Events in time order across entities: a ``key`` from the vocabulary, one it does not
    hold, or null; a ``tag``; a number ``temp``; no ``y``."""
    rng = np.random.default_rng(seed)
    keys = [*(f"k{j}" for j in range(12)), "unseen", None]
    out = []
    for t in range(length):
        for e in rng.permutation(entities).tolist():
            out.append(
                {
                    "unique_id": f"e{e:03d}",
                    "ds": f"2024-01-01T{t // 60:02d}:{t % 60:02d}",
                    "key": keys[int(rng.integers(0, len(keys)))],
                    "tag": ["a", "b", None][int(rng.integers(0, 3))],
                    "temp": round(float(rng.normal()), 3),
                }
            )
    return out


@pytest.mark.parametrize(("groups", "engine"), [(0, "streamer"), (3, "streamer"), (3, "faust")])
async def test_next_event_predictions_survive_kill_9_and_equal_the_module(
    services: dict[str, str], ns: str, tmp_path: Path, groups: int, engine: str
) -> None:
    """(``groups``: one softmax, and a two-level one searching two of its three groups;
    ``engine``: the worker's own loop, or streamer's batch path as a Faust agent.)"""
    model = next_model(features=("temp",), groups=groups, searched=2)
    model_dir = tmp_path / "model"
    save_artifact(model, model_dir, {"note": "random weights for tests"})
    events = token_events(120, 25, seed=3)
    settings = settings_for(services, ns)
    await ensure_topics(settings)
    msgs = [(str(e["unique_id"]).encode(), orjson.dumps(e)) for e in events]
    await produce(services["bootstrap"], settings.topics.events, msgs)
    env = worker_env(services, ns, model_dir, **FAST, STREAMER_ENGINE=engine)
    rng = random.Random(9)
    kill_points = sorted(rng.sample(range(300, len(events) - 300), 3))
    async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
        for i, point in enumerate(kill_points):
            w = WorkerProcess(env, tmp_path / f"w{i}.log")
            await out.read_until(point, timeout=120, proc=w)
            await asyncio.sleep(rng.uniform(0, 0.3))
            w.kill()
        w = WorkerProcess(env, tmp_path / "final.log")
        try:
            await w.logged("partitions assigned")
            while len({(p.partition, p.offset) for p in predictions_of(out.records)}) < len(events):
                await out.read_until(len(out.records) + 1, timeout=60, proc=w)
            await out.drain(quiet_s=2)
        finally:
            assert w.stop() == 0, w.tail()
        preds = predictions_of(out.records)

    by_id = defaultdict(list)
    for p in preds:
        by_id[(p.partition, p.offset)].append(p)
    assert len(by_id) == len(events)
    assert all(all(d == ds[0] for d in ds) for ds in by_id.values()), "a duplicate differs"
    series: dict[str, list[dict[str, object]]] = defaultdict(list)
    for e in events:
        series[str(e["unique_id"])].append(e)
    ref = {
        uid: offline_served(
            model,
            TokenSeries(
                uid,
                [str(e["ds"]) for e in evs],
                {c: [e[c] for e in evs] for c in ("key", "tag")},  # type: ignore[misc]
                np.array([[e["temp"]] for e in evs], np.float64),
            ),
        )
        for uid, evs in series.items()
    }
    vocab = model.spec.vocabularies[0]
    for ds in by_id.values():
        p = ds[0]
        want = ref[p.unique_id][0][p.step - 1]
        k = (len(want) - 2) // 2
        assert p.next == tuple(vocab[int(i) - 1] for i in want[:k])
        np.testing.assert_allclose(p.values, want[k : 2 * k], rtol=1e-5, atol=1e-6)
        assert (p.surprise is None) == (p.step == 1)
        if p.surprise is not None:
            np.testing.assert_allclose(p.surprise, want[-2], rtol=1e-5, atol=1e-5)
        assert p.rank == (None if want[-1] != want[-1] else int(want[-1]))
        assert p.y != p.y  # (no y in the events: null)
    store = store_for(services, ns)
    try:
        raws = await store.get_many(list(ref))
    finally:
        await store.aclose()
    for uid, raw in zip(ref, raws, strict=True):
        assert raw is not None
        rec = decode(raw)
        _, h, c, comp = ref[uid]
        assert rec.step == len(series[uid])
        np.testing.assert_allclose(rec.h, h, atol=1e-5, rtol=0)
        np.testing.assert_allclose(rec.c, c, atol=1e-5, rtol=0)
        np.testing.assert_allclose(rec.comp, comp, atol=1e-5, rtol=1e-6)
    print(f"kill points {kill_points}: {len(events)} events, {len(preds) - len(events)} duplicates")


def test_train_replay_and_evaluate_a_next_event_model_from_the_command_line(
    services: dict[str, str], ns: str, tmp_path: Path
) -> None:
    """The recipe a user follows: ``train --next`` with held-out events, ``evaluate`` through a
    worker. Every entity walks a fixed cycle, so the model and first-order Markov transitions
    rank the next key first, and popularity cannot; the run's topics and keys are removed."""
    from tests.integration.test_models import await_sync, keys_of, topics_named
    from tests.unit.test_nextevent import _cycles

    data = tmp_path / "cycles.csv"
    _cycles(n_entities=30, length=30).to_csv(data, index=False)
    env = worker_env(services, ns, tmp_path / "m")
    cli = [sys.executable, "-m", "streamer.ops.cli"]
    train = [
        *cli,
        "train",
        str(data),
        "--next",
        "key",
        "--categorical",
        "tag",
        "--out",
        str(tmp_path / "m"),
        "--holdout-fraction",
        "0.2",
        "--hidden-size",
        "16",
        "--embedding",
        "8",
        "--lr",
        "0.02",
        "--epochs",
        "40",
        "--top-k",
        "5",
    ]
    r = subprocess.run(train, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "vocabularies key 6, tag 2" in r.stdout
    evaluate = [
        *cli,
        "evaluate",
        str(data),
        "--model",
        str(tmp_path / "m"),
        "--json",
        str(tmp_path / "r.json"),
        "--workdir",
        str(tmp_path / "wd"),
    ]
    r = subprocess.run(evaluate, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["task"] == "next" and res["held_out_fraction"] == 0.2
    assert res["events_scored"] == 30 * 6 and res["events_streamed"] == 30 * 30
    assert res["streamed_equals_offline"] and res["seen_in_training"] == 0
    s = res["scores"]
    assert s["streamer"]["recall@1"] > 0.95 and s["markov"]["recall@1"] > 0.95
    assert s["popular"]["recall@1"] < 0.5 and set(s["streamer"]) >= {"mrr@5", "ndcg@5"}
    assert "recall@10" not in s["streamer"]  # (beyond the model's top 5)
    assert "Recall@5" in r.stderr and "Markov" in r.stderr
    (log,) = (tmp_path / "wd").glob("eval*.worker.log")
    run = log.name.split(".")[0]
    assert not await_sync(topics_named(services["bootstrap"], run)), "the run's topics are left"
    assert not await_sync(keys_of(services["redis_url"], run)), "the run's keys are left"
    # a model trained on every event is refused: its held-out events were seen
    r = subprocess.run(
        [
            *cli,
            "train",
            str(data),
            "--next",
            "key",
            "--categorical",
            "tag",
            "--out",
            str(tmp_path / "all"),
            "--epochs",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    evaluate[evaluate.index(str(tmp_path / "m"))] = str(tmp_path / "all")
    r = subprocess.run(evaluate, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "trained on the held-out events" in r.stderr


def test_anomalous_log_sessions_are_found_by_the_surprise_of_the_streamed_predictions(
    services: dict[str, str], ns: str, tmp_path: Path
) -> None:
    """Normal sessions to train on; held-out sessions of which a third were hurt (a swap, a
    missing step, an unknown key), streamed through a worker by ``evaluate --label anomaly``:
    the probability rule finds them."""
    from streamer.train.logs import log_sessions
    from streamer.train.training import TrainConfig, train

    res = train(log_sessions(600, seed=1, prefix="train"), TrainConfig(next="key", seed=0))
    save_artifact(res.model, tmp_path / "m", res.summary, res.span)
    data = tmp_path / "test.csv"
    log_sessions(240, 1 / 3, seed=2, prefix="test").to_csv(data, index=False)
    env = worker_env(services, ns, tmp_path / "m")
    evaluate = [
        sys.executable,
        "-m",
        "streamer.ops.cli",
        "evaluate",
        str(data),
        "--model",
        str(tmp_path / "m"),
        "--label",
        "anomaly",
        "--json",
        str(tmp_path / "r.json"),
        "--workdir",
        str(tmp_path / "wd"),
    ]
    r = subprocess.run(evaluate, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((tmp_path / "r.json").read_text())
    assert out["task"] == "next-anomalies" and out["anomalous"] == 80 and out["entities"] == 240
    assert out["streamed_equals_offline"] and out["seen_in_training"] == 0
    assert out["best_f1"] > 0.9, out["rules"]
    assert out["rules"]["top 1"]["recall"] == 1.0  # (everything is flagged at g = 1)
    assert "p < 0.01" in r.stderr and "top 5" in r.stderr
