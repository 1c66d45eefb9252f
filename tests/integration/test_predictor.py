"""The predictor against a real Redis (no Kafka): interleaved entities, random batches, restarts."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from streamer.artifact import load_artifact
from streamer.predictor import Predictor
from streamer.schemas import Prediction
from streamer.state import RedisStateStore, decode
from tests.conftest import make_panel
from tests.reference import check_predictions, expected_by_entity, synthetic_events


async def run_in_batches(pred: Predictor, events: list, seed: int) -> list[Prediction]:  # type: ignore[type-arg]
    rng = random.Random(seed)
    out: list[Prediction] = []
    i = 0
    while i < len(events):
        n = rng.choice([1, 2, 7, 64, 97, 256])
        out += await pred.step_many(events[i : i + n])
        i += n
    return out


@pytest.mark.parametrize("with_features", [False, True])
async def test_stepping_through_redis_equals_nn_lstm_per_entity(
    services: dict[str, str], ns: str, model_dir: Path, feature_model_dir: Path, with_features: bool
) -> None:
    art = load_artifact(feature_model_dir if with_features else model_dir)
    df = make_panel(120, 3, 40, seed=1, features=("temp",) if with_features else ())
    events = synthetic_events(df)
    expected = expected_by_entity(art.model, df)

    store = RedisStateStore.from_url(services["redis_url"], ns, ttl_s=600)
    pred = Predictor(art.model, art.version, store)
    half = len(events) // 2
    out = await run_in_batches(pred, events[:half], seed=2)
    await pred.aclose()
    # A restart: a new predictor with nothing in memory continues from Redis.
    store = RedisStateStore.from_url(services["redis_url"], ns, ttl_s=600)
    pred = Predictor(art.model, art.version, store)
    out += await run_in_batches(pred, events[half:], seed=3)

    assert len(out) == len(events)
    assert sorted((p.partition, p.offset) for p in out) == sorted(
        (e.partition, e.offset) for e in events
    )
    assert check_predictions(out, expected) == len(events)
    assert all(p.model_version == art.version for p in out)

    raws = await store.get_many(list(expected))
    for uid, raw in zip(expected, raws, strict=True):
        assert raw is not None
        rec = decode(raw)
        exp = expected[uid]
        assert rec.step == len(exp.ds)
        np.testing.assert_allclose(rec.h, exp.h, atol=1e-5, rtol=0)
        np.testing.assert_allclose(rec.c, exp.c, atol=1e-5, rtol=0)

    # Replaying everything (a consumer restarting from old offsets) applies nothing again.
    before = await store.get_many(list(expected))
    report = await pred.process(events)
    assert report.skipped == len(events) and report.predictions == []
    assert await store.get_many(list(expected)) == before
    await pred.aclose()


async def test_a_batch_with_many_events_of_one_entity_keeps_their_order(
    services: dict[str, str], ns: str, model_dir: Path
) -> None:
    art = load_artifact(model_dir)
    df = make_panel(3, 50, 50, seed=4)
    events = synthetic_events(df)
    expected = expected_by_entity(art.model, df)
    store = RedisStateStore.from_url(services["redis_url"], ns)
    pred = Predictor(art.model, art.version, store)
    out = await pred.step_many(events)  # one batch: 50 waves of 3
    assert [p.offset for p in out] == [e.offset for e in events]
    check_predictions(out, expected)
    await pred.aclose()


async def test_a_state_that_does_not_fit_the_model_is_reset(
    services: dict[str, str], ns: str, model_dir: Path
) -> None:
    art = load_artifact(model_dir)
    store = RedisStateStore.from_url(services["redis_url"], ns)
    await store.redis.set(store.key("e0000"), b"STRM" + b"\x00" * 100)  # undecodable
    df = make_panel(1, 5, 5, seed=5)
    events = synthetic_events(df)
    pred = Predictor(art.model, art.version, store)
    report = await pred.process(events[:1])
    assert report.resets == 1 and len(report.predictions) == 1
    out = report.predictions + await pred.step_many(events[1:])
    check_predictions(out, expected_by_entity(art.model, df))
    await pred.aclose()
