"""Cells, heads, window models, the registry and hot swaps, against a real Redis (and Kafka)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from streamer.errors import ArtifactError
from streamer.kafka import ensure_topics
from streamer.model import ModelSpec, SequenceModel
from streamer.model.artifact import Artifact, load_artifact, save_artifact
from streamer.model.ensemble import merge
from streamer.model.registry import Registry
from streamer.schemas import Event, Prediction
from streamer.serve.predictor import Predictor
from streamer.settings import Settings
from streamer.state import RedisStateStore
from streamer.state.codec import decode
from streamer.train.data import event_rows, split_series
from streamer.train.offline import offline_predict, offline_windows, series_inputs
from tests.conftest import made_up_intervals, make_panel
from tests.integration.workers import (
    TopicReader,
    WorkerProcess,
    event_message,
    predictions_of,
    produce,
    worker_env,
)
from tests.reference import in_batches, synthetic_events
from tests.unit.test_training import labelled_panel


def random_model(seed: int = 7, **spec: object) -> SequenceModel:
    torch.manual_seed(seed)
    model = SequenceModel(ModelSpec(**{"hidden_size": 12, "num_layers": 2, **spec}))  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)  # states move far from zero, so differences show
    return model.eval()


def artifact(model: SequenceModel, out: Path) -> Artifact:
    save_artifact(model, out)
    return load_artifact(out)


KINDS = {
    "gru-forecast": {"cell": "gru", "horizon": 3},
    "rnn-forecast": {"cell": "rnn", "horizon": 2},
    "lstm-ensemble-of-3-forecast": {"horizon": 3, "members": 3, **made_up_intervals((80,), 3)},
    "gru-ensemble-of-2-classify": {
        "cell": "gru",
        "task": "classify",
        "classes": ("a", "b"),
        "members": 2,
    },
    "lstm-forecast-intervals-unscaled": {
        "horizon": 3,
        "scaling": "none",
        **made_up_intervals((50, 90), 3),
    },
    "lstm-classify": {"task": "classify", "classes": ("down", "up")},
    # calendar inputs read from each event's ds (hourly here: the hour moves at every step)
    "lstm-forecast-calendar": {
        "horizon": 3,
        "calendar": ("hour", "weekday", "month"),
        **made_up_intervals((80,), 3),
    },
    # level and seasonal components over two seasons (a 'day' of 3 steps, a 'week' of 6)
    "lstm-forecast-two-seasons": {
        "horizon": 3,
        "season": 3,
        "season2": 6,
        "smoothing": (0.3, 0.2, 0.4),
        **made_up_intervals((80,), 3),
    },
    "gru-classify-calendar": {
        "cell": "gru",
        "task": "classify",
        "classes": ("down", "up"),
        "calendar": ("hour",),
    },
    "gru-classify-unscaled": {
        "cell": "gru",
        "task": "classify",
        "classes": ("down", "up"),
        "scaling": "none",
    },
}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_every_cell_and_head_streams_equal_to_its_offline_pass(
    services: dict[str, str], ns: str, tmp_path: Path, kind: str
) -> None:
    spec = dict(KINDS[kind])
    n = int(spec.pop("members", 1))  # type: ignore[call-overload]
    if n > 1:  # an ensemble of random members (with the intervals of the kind)
        bounds = {k: spec.pop(k) for k in ("levels", "interval_lo", "interval_hi") if k in spec}
        model = merge([random_model(seed, features=("end",), **spec) for seed in range(n)])  # type: ignore[arg-type]
        model.spec = replace(model.spec, **bounds)
    else:
        model = random_model(features=("end",), **spec)  # type: ignore[arg-type]
    art = artifact(model, tmp_path / "m")
    df = labelled_panel(n=30, t=15).drop(columns=["label"])
    events = synthetic_events(df)
    offline = {s.unique_id: s for s in split_series(df, ["end"])}
    store = RedisStateStore.from_url(services["redis_url"], ns)
    pred = Predictor(art.model, art.version, store)
    out = await in_batches(pred, events[: len(events) // 2], seed=1)
    await pred.aclose()
    pred = Predictor(art.model, art.version, RedisStateStore.from_url(services["redis_url"], ns))
    out += await in_batches(pred, events[len(events) // 2 :], seed=2)  # after a restart
    assert len(out) == len(events)
    expected = {u: offline_predict(art.model, s) for u, s in offline.items()}
    for p in out:
        np.testing.assert_allclose(p.served, expected[p.unique_id][0][p.step - 1], atol=1e-5)
        if art.spec.task == "classify":
            assert p.classes == art.spec.classes and abs(sum(p.values) - 1) < 1e-6
    for uid, raw in zip(offline, await pred.store.get_many(list(offline)), strict=True):
        rec = decode(raw)  # type: ignore[arg-type]
        np.testing.assert_allclose(rec.h, expected[uid][1], atol=1e-5)
        assert rec.c.shape[0] == (2 if art.spec.cell == "lstm" else 0)
    await pred.aclose()


async def test_a_window_model_predicts_each_closed_window_as_offline(
    services: dict[str, str], ns: str, tmp_path: Path
) -> None:
    model = random_model(
        features=("end",),
        task="classify",
        classes=("down", "up"),
        window=4,
        window_end="end",
        num_layers=1,
    )
    art = artifact(model, tmp_path / "w")
    df = labelled_panel(n=25, t=13).drop(columns=["label"])
    events = synthetic_events(df)
    expected = {s.unique_id: dict(offline_windows(art.model, s)) for s in split_series(df, ["end"])}
    n_windows = sum(len(v) for v in expected.values())
    store = RedisStateStore.from_url(services["redis_url"], ns)
    pred = Predictor(art.model, art.version, store)
    out = await in_batches(pred, events[:150], seed=3)
    await pred.aclose()
    pred = Predictor(art.model, art.version, RedisStateStore.from_url(services["redis_url"], ns))
    out += await in_batches(pred, events[150:], seed=4)
    assert len(out) == n_windows and n_windows > 3 * 25
    for p in out:
        np.testing.assert_allclose(p.values, expected[p.unique_id][p.step - 1], atol=1e-5)
        assert 1 <= p.window <= 4
    # A replay re-emits the window predictions the states kept, window lengths included.
    report = await pred.process(events)
    assert report.applied == 0 and report.reemitted == n_windows
    assert sorted(report.predictions, key=lambda p: (p.partition, p.offset)) == sorted(
        out, key=lambda p: (p.partition, p.offset)
    )
    await pred.aclose()


async def test_registry_publish_activate_and_roll_back(
    services: dict[str, str], ns: str, tmp_path: Path
) -> None:
    a = artifact(random_model(seed=1, horizon=2), tmp_path / "a")
    b = artifact(random_model(seed=2, horizon=2, cell="gru"), tmp_path / "b")
    reg = Registry(RedisStateStore.from_url(services["redis_url"], ns).redis, ns)
    assert await reg.active() is None and await reg.versions() == []
    assert await reg.publish(tmp_path / "a") == a.version
    assert await reg.publish(tmp_path / "b") == b.version
    assert await reg.publish(tmp_path / "a") == a.version  # again: nothing changes
    assert [v.version for v in await reg.versions()] == [a.version, b.version]
    assert await reg.activate(a.version) is None
    assert await reg.activate(b.version) == a.version
    assert await reg.activate(a.version) == b.version  # a rollback
    assert await reg.active() == a.version
    assert [v.active for v in await reg.versions()] == [True, False]
    assert [x["version"] for x in await reg.activations()] == [a.version, b.version, a.version]
    loaded = await reg.load(b.version)
    assert loaded.version == b.version and loaded.spec.cell == "gru"
    for k, v in b.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)
    assert (await reg.show(b.version)).spec["cell"] == "gru"
    with pytest.raises(ArtifactError, match="no published version"):
        await reg.activate("0123456789ab")
    (tmp_path / "a" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ArtifactError):
        await reg.publish(tmp_path / "a")
    await reg.aclose()


@pytest.mark.parametrize("policy", ["keep", "reset"])
async def test_states_of_another_version_follow_the_policy(
    services: dict[str, str], ns: str, tmp_path: Path, policy: str
) -> None:
    a = artifact(random_model(seed=1, horizon=2), tmp_path / "a")
    b = artifact(random_model(seed=2, horizon=2), tmp_path / "b")  # same shape
    c = artifact(random_model(seed=3, horizon=2, hidden_size=6), tmp_path / "c")  # another shape
    df = make_panel(6, 20, 20, seed=5)
    events = synthetic_events(df)
    first, second = events[:60], events[60:]

    def store() -> RedisStateStore:
        return RedisStateStore.from_url(services["redis_url"], ns)

    pred_a = Predictor(a.model, a.version, store())
    by_a = await pred_a.step_many(first)
    pred_b = Predictor(b.model, b.version, store(), on_model_change=policy)
    out = await pred_b.step_many(second)
    assert all(p.model_version == b.version for p in out)
    again = await pred_b.process(first)  # the fence survived the change; a's outputs were kept
    assert again.applied == 0 and [p.values for p in again.predictions] == [p.values for p in by_a]
    for s in split_series(df):
        mine = [p for p in out if p.unique_id == s.unique_id]
        k = len(s.y) - len(mine)  # events applied by a
        x, mean, scale = series_inputs(s, b.spec)
        with torch.no_grad():
            state = b.model.rnn.zero_state(1)
            if policy == "keep":  # b continues from a's state (a stepped the first k events)
                _, state = a.model(torch.from_numpy(x[:k])[None])
                start, base = k, 0
            else:  # b starts over: zeros, step count and statistics too
                sub = s.__class__(s.unique_id, s.ds[k:], s.y[k:], s.features[k:])
                x, mean, scale = series_inputs(sub, b.spec)
                start, base = 0, 0
            for t, p in enumerate(mine):
                raw, state = b.model.step(torch.from_numpy(x[start + t : start + t + 1]), state)
                want = raw[0].numpy() * scale[start + t] + mean[start + t]
                np.testing.assert_allclose(p.values, want, atol=1e-4, rtol=1e-5)
                assert p.step == (k + t + 1 if policy == "keep" else base + t + 1)
    # A state of another shape starts over under either policy, its fence kept.
    pred_c = Predictor(c.model, c.version, store(), on_model_change=policy)
    report = await pred_c.process(events)
    assert report.applied == 0 and report.skipped == len(events)
    last = {e.unique_id: e for e in events}
    extra = [Event(u, "2031-01-01", 1.0, (), e.partition, e.offset + 1000) for u, e in last.items()]
    report = await pred_c.process(extra)
    assert report.resets == len(last) and report.applied == len(extra)
    assert all(p.step == 1 for p in report.predictions)  # started over
    for pc in pred_a, pred_b, pred_c:
        await pc.aclose()


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["streamer", "faust"])
async def test_a_model_activated_while_a_worker_streams_takes_over_at_a_batch_boundary(
    services: dict[str, str], ns: str, tmp_path: Path, engine: str
) -> None:
    a = artifact(random_model(seed=1, horizon=2), tmp_path / "a")
    b = artifact(random_model(seed=2, horizon=2), tmp_path / "b")
    reg = Registry(RedisStateStore.from_url(services["redis_url"], ns).redis, ns)
    await reg.publish(tmp_path / "a")
    await reg.activate(a.version)
    df = make_panel(40, 30, 30, seed=8)
    msgs = [event_message(ev) for ev in event_rows(df)]
    settings = Settings(
        kafka={"bootstrap_servers": services["bootstrap"]},  # type: ignore[arg-type]
        topics={  # type: ignore[arg-type]
            "events": f"{ns}.events",
            "predictions": f"{ns}.predictions",
            "windows": f"{ns}.windows",
            "dead_letter": f"{ns}.dlq",
        },
    )
    await ensure_topics(settings)
    # no STREAMER_MODEL_PATH needed: the worker serves the registry's active version
    env = worker_env(
        services, ns, tmp_path / "unused", STREAMER_REGISTRY_POLL_S="0.2", STREAMER_ENGINE=engine
    )
    env.pop("STREAMER_MODEL_PATH")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    third = len(msgs) // 3
    async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
        try:
            await produce(services["bootstrap"], settings.topics.events, msgs[:third])
            await out.read_until(third, timeout=120, proc=worker)
            sending = asyncio.create_task(
                produce_slowly(services["bootstrap"], settings.topics.events, msgs[third:])
            )
            await asyncio.sleep(1.0)
            await reg.publish(tmp_path / "b")
            await reg.activate(b.version)  # while events keep coming
            await sending
            await out.read_until(len(msgs), timeout=120, proc=worker)
            await out.drain(quiet_s=2)
        finally:
            code = worker.stop()
        assert code == 0, worker.tail()
    preds = predictions_of(out.records)
    assert len(preds) == len(msgs)
    assert max(Counter((p.partition, p.offset) for p in preds).values()) == 1
    versions = Counter(p.model_version for p in preds)
    assert versions[a.version] >= third and versions[b.version] > 0  # switched mid-stream
    by_partition: dict[int, list[Prediction]] = defaultdict(list)
    for p in preds:
        by_partition[p.partition].append(p)
    for ps in by_partition.values():  # one switch per partition, in offset order
        vs = [p.model_version for p in sorted(ps, key=lambda p: p.offset)]
        assert vs == sorted(vs, key=lambda v: v != a.version)
    models = {a.version: a.model, b.version: b.model}
    for s in split_series(df):  # every event stepped once, by the version it names
        mine = sorted((p for p in preds if p.unique_id == s.unique_id), key=lambda p: p.step)
        x, mean, scale = series_inputs(s, a.spec)
        state = a.model.rnn.zero_state(1)
        with torch.no_grad():
            for t, p in enumerate(mine):
                m = models[p.model_version]
                raw, state = m.step(torch.from_numpy(x[t : t + 1]), state)
                want = raw[0].numpy() * scale[t] + mean[t]
                np.testing.assert_allclose(p.values, want, atol=1e-4, rtol=1e-5)
    assert "at a batch boundary" in worker.log.read_text()
    store = RedisStateStore.from_url(services["redis_url"], ns)
    raws = await store.get_many(["e0000"])
    assert decode(raws[0]).model_version == b.version  # type: ignore[arg-type]
    await store.aclose()
    await reg.aclose()


async def produce_slowly(bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]]) -> None:
    for i in range(0, len(msgs), 40):
        await produce(bootstrap, topic, msgs[i : i + 40])
        await asyncio.sleep(0.1)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["forecast", "origins", "classify", "window"])
def test_evaluate_scores_what_the_worker_published(
    services: dict[str, str], ns: str, tmp_path: Path, kind: str
) -> None:
    if kind in ("forecast", "origins"):
        df = make_panel(12, 30, 40, seed=9)
        # (with weekly components: the daily panel's season; evaluate scores them alone too)
        # (and for the rolling origins calendar inputs, read from each event's ds by the worker)
        model = random_model(
            horizon=4,
            season=7,
            smoothing=(0.3, 0.2),
            calendar=("weekday", "month") if kind == "origins" else (),
            **made_up_intervals((80, 95), 4),  # type: ignore[arg-type]
        )
        extra: list[str] = ["--baselines"]
        if kind == "origins":  # a rolling-origin evaluation: three origins, four points apart
            extra += ["--origins", "3"]
    else:
        df = labelled_panel(n=20, t=12)
        spec = {"task": "classify", "classes": ("down", "up"), "features": ("end",)}
        if kind == "window":
            spec.update(window=5, window_end="end", num_layers=1)
        model = random_model(**spec)  # type: ignore[arg-type]
        extra = ["--label", "label"]
    data = tmp_path / "data.csv"
    df.to_csv(data, index=False)
    save_artifact(model, tmp_path / "m")
    env = worker_env(services, ns, tmp_path / "m")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamer.ops.cli",
            "evaluate",
            str(data),
            "--model",
            str(tmp_path / "m"),
            "--json",
            str(tmp_path / "r.json"),
            "--workdir",
            str(tmp_path / "wd"),
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["streamed_equals_offline"] and res["max_abs_diff_streamed_vs_offline"] < 1e-4
    assert res["tolerance"] == 1e-4  # (sequences of at most 100 events)
    assert res["seen_in_training"] is None  # (no training span: a model made by hand)
    assert "does not say what it was trained on" in r.stderr
    (log,) = (tmp_path / "wd").glob("eval*.worker.log")
    run = log.name.split(".")[0]
    assert not await_sync(topics_named(services["bootstrap"], run)), "the run's topics are left"
    assert not await_sync(keys_of(services["redis_url"], run)), "the run's keys are left"
    if kind in ("forecast", "origins"):
        origins = 3 if kind == "origins" else 1
        assert res["entities"] == 12 and res["horizon"] == 4 and res["origins"] == origins
        assert set(res["overall"]) >= {"mase_model", "mase_seasonal_naive", "smape_naive"}
        assert {"mase_auto_ets", "smape_theta"} <= set(res["overall"])  # --baselines
        assert res["overall"]["mase_components"] > 0 and "its components alone" in r.stderr
        assert all(np.isfinite(r["mase_auto_ets"]) for r in res["per_entity"].values())
        assert res["events_streamed"] == len(df) - 12 * 4
        # the intervals, the model's and the classical methods' own, scored on the same points
        assert res["levels"] == [80, 95] and "prediction intervals on the held-out" in r.stderr
        for name in ("model", "auto_ets", "theta"):
            for v in (80, 95):
                assert 0 <= res["overall"][f"coverage{v}_{name}"] <= 1
                assert res["overall"][f"msis{v}_{name}"] > 0
        covered = [
            r["coverage95_model"] >= r["coverage80_model"] for r in res["per_entity"].values()
        ]
        assert all(covered)  # the 95% interval holds the 80% one
        # seasonal naive (weekly: the daily panel's season) by hand, at each origin of one entity
        y = df[df["unique_id"] == "e0003"]["y"].to_numpy()
        mases = []
        for i in range(origins):
            n = len(y) - 4 * (origins - i)
            history, actual = y[:n], y[n : n + 4]
            scale = np.mean(np.abs(history[7:] - history[:-7]))
            mases.append(np.mean(np.abs(np.resize(history[-7:], 4) - actual)) / scale)
        got = res["per_entity"]["e0003"]["mase_seasonal_naive"]
        assert got == pytest.approx(np.mean(mases), rel=1e-9)
        if origins > 1:
            assert "3 origins" in r.stderr and "3 forecast origins, 4 points apart" in r.stderr
    elif kind == "classify":
        assert res["sequences"] == 20 and len(res["accuracy_by_step"]) == 12
        assert 0 <= res["accuracy_at_end"] <= 1 and res["log_loss_at_end"] > 0
    else:
        assert (
            res["windows"] == 20 * 2
        )  # windows of 5 close at events 5 and 10 (the last 2 stay open)
    assert "streamed predictions equal the offline model's" in r.stdout


def await_sync(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def topics_named(bootstrap: str, run: str) -> list[str]:
    """The topics of an evaluation run (``{run}.events``, ...)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return [t for t in await admin.list_topics() if t.startswith(f"{run}.")]
    finally:
        await admin.close()


async def keys_of(redis_url: str, run: str) -> list[bytes]:
    """The Redis keys of an evaluation run's model ``run``."""
    redis = Redis.from_url(redis_url)
    try:
        found = []
        for pattern in (
            f"streamer:{run}:*",
            f"streamer-outbox:{run}:*",
            f"streamer-workers:*{run}",
        ):
            found += [k async for k in redis.scan_iter(match=pattern)]
        return found
    finally:
        await redis.aclose()
