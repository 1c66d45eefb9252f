"""The predictor against a real Redis (no Kafka): interleaved entities, random batches, restarts."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest

from streamer.errors import StateError, StoreUnavailable
from streamer.model.artifact import Artifact, load_artifact, save_artifact
from streamer.schemas import Event, Prediction
from streamer.serve.pipeline import BatchHandler
from streamer.serve.predictor import Predictor
from streamer.state import RedisStateStore
from streamer.state.cache import StateCache
from streamer.state.codec import StateRecord, decode, encode
from streamer.train.data import Series
from streamer.train.offline import offline_predict
from tests.conftest import make_model, make_panel
from tests.reference import (
    check_predictions,
    expected_by_entity,
    raw_messages,
    synthetic_events,
)


async def run_in_batches(pred: Predictor, events: list, seed: int) -> list[Prediction]:  # type: ignore[type-arg]
    rng = random.Random(seed)
    out: list[Prediction] = []
    i = 0
    while i < len(events):
        n = rng.choice([1, 2, 7, 64, 97, 256])
        out += await pred.step_many(events[i : i + n])
        i += n
    return out


#: Ways to run the predictor that must all compute the same: the plain path; with a state cache
#: large enough for every entity, or so small that it evicts all the time; on CPU through the
#: GPU path's staging (one packed buffer each way) with the fused kernel for every wave.
VARIANTS = ["plain", "cached", "cached-tiny", "staged-fused"]


def make_predictor(art: Artifact, store: RedisStateStore, variant: str) -> Predictor:
    cache = {"cached": StateCache(2**24), "cached-tiny": StateCache(2000)}.get(variant)
    pred = Predictor(
        art.model,
        art.version,
        store,
        cache=cache,
        fused_cell_from=1 if variant == "staged-fused" else None,
    )
    pred.staged = variant == "staged-fused"
    return pred


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("with_features", [False, True])
async def test_stepping_through_redis_equals_nn_lstm_per_entity(
    services: dict[str, str],
    ns: str,
    model_dir: Path,
    feature_model_dir: Path,
    with_features: bool,
    variant: str,
) -> None:
    art = load_artifact(feature_model_dir if with_features else model_dir)
    df = make_panel(120, 3, 40, seed=1, features=("temp",) if with_features else ())
    events = synthetic_events(df)
    expected = expected_by_entity(art.model, df)

    store = RedisStateStore.from_url(services["redis_url"], ns, ttl_s=600)
    pred = make_predictor(art, store, variant)
    half = len(events) // 2
    out = await run_in_batches(pred, events[:half], seed=2)
    if pred.cache is not None:
        assert pred.cache.hits > 0 and pred.cache.nbytes <= pred.cache.max_bytes
    await pred.aclose()
    # A restart: a new predictor with nothing in memory continues from Redis.
    store = RedisStateStore.from_url(services["redis_url"], ns, ttl_s=600)
    pred = make_predictor(art, store, variant)
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

    # Replaying everything (a consumer restarting from old offsets) applies nothing again, and
    # sends again, bit for bit, the predictions the states kept (no offset was committed here).
    before = await store.get_many(list(expected))
    report = await pred.process(events)
    assert report.skipped == len(events) and report.applied == 0
    assert report.reemitted == len(events) and report.predictions == sorted(
        out, key=lambda p: [(e.partition, e.offset) for e in events].index((p.partition, p.offset))
    )
    assert await store.get_many(list(expected)) == before
    await pred.aclose()


async def test_outputs_below_the_committed_offset_are_not_kept(
    services: dict[str, str], ns: str, model_dir: Path
) -> None:
    art = load_artifact(model_dir)
    df = make_panel(10, 6, 6, seed=12)
    events = synthetic_events(df)
    pred = Predictor(art.model, art.version, RedisStateStore.from_url(services["redis_url"], ns))
    await pred.process(events[:30])
    # The consumer committed everything it processed: the next batch drops those outputs.
    committed = {p: max(e.offset for e in events[:30] if e.partition == p) + 1 for p in range(4)}
    await pred.process(events[30:], committed)
    report = await pred.process(events, committed)
    assert report.skipped == len(events)
    assert {(p.partition, p.offset) for p in report.predictions} == {
        (e.partition, e.offset) for e in events[30:]
    }
    assert report.reemitted == len(events) - 30
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


async def test_a_state_that_does_not_fit_the_model_is_reset_and_keeps_its_fence(
    services: dict[str, str], ns: str, model_dir: Path
) -> None:
    art = load_artifact(model_dir)
    df = make_panel(2, 6, 6, seed=5)
    events = synthetic_events(df)
    first = {e.unique_id: e for e in reversed(events)}  # first event of each entity
    store = RedisStateStore.from_url(services["redis_url"], ns)
    wrong_shape = StateRecord(
        h=np.ones((3, 5), np.float32),
        c=np.ones((3, 5), np.float32),
        model_version="old",
        step=40,
        partition=first["e0000"].partition,
        offset=first["e0000"].offset - 1,
        updated_ms=0,
        count=3.0,
        mean=1.0,
        var=1.0,
    )
    await store.redis.set(store.key("e0000"), encode(wrong_shape))
    # e0001: right magic, body cut short, fence on its own partition at its 3rd event's offset
    e1 = [e for e in events if e.unique_id == "e0001"]
    cut = encode(dataclasses.replace(wrong_shape, partition=e1[2].partition, offset=e1[2].offset))[
        :60
    ]
    await store.redis.set(store.key("e0001"), cut)

    pred = Predictor(art.model, art.version, store)
    report = await pred.process(events)
    assert report.resets == 2 and report.rejected == 0
    assert report.skipped == 3, "events at or below the kept fence are not applied again"
    out = report.predictions
    assert sorted(p.offset for p in out if p.unique_id == "e0001") == sorted(
        e.offset for e in e1[3:]
    )
    e0 = [p for p in out if p.unique_id == "e0000"]
    assert [p.step for p in e0] == list(range(1, 7)), "the reset entity starts over from step 1"
    check_predictions(e0, expected_by_entity(art.model, df[df.unique_id == "e0000"]))
    await pred.aclose()


async def test_an_event_delivered_twice_in_one_batch_is_applied_once(
    services: dict[str, str], ns: str, model_dir: Path
) -> None:
    art = load_artifact(model_dir)
    df = make_panel(4, 10, 10, seed=6)
    events = synthetic_events(df)
    doubled = events[:20] + events[10:]  # a rebalance re-delivered events 10..19
    pred = Predictor(art.model, art.version, RedisStateStore.from_url(services["redis_url"], ns))
    report = await pred.process(doubled)
    assert report.skipped == 10 and len(report.predictions) == len(events)
    check_predictions(report.predictions, expected_by_entity(art.model, df))
    await pred.aclose()


class WrappedStore:
    """A real Redis store with a fault injected around its write (subclasses say which)."""

    def __init__(self, inner: RedisStateStore):
        self.inner = inner
        self.outbox = inner.outbox

    async def get_many(self, entities):  # type: ignore[no-untyped-def]
        return await self.inner.get_many(entities)

    async def kept(self, partition, since):  # type: ignore[no-untyped-def]
        return await self.inner.kept(partition, since)

    async def trim(self, committed):  # type: ignore[no-untyped-def]
        await self.inner.trim(committed)

    async def aclose(self) -> None:
        await self.inner.aclose()


class LosesFirstReply(WrappedStore):
    """The first write is applied but its reply lost (a timeout)."""

    lost = 0

    async def put_many(self, items, bases=None, outbox=()):  # type: ignore[no-untyped-def]
        result = await self.inner.put_many(items, bases, outbox)
        if not self.lost:
            self.lost += 1
            raise StoreUnavailable("reply lost after the write was applied")
        return result


async def test_a_write_whose_reply_was_lost_is_retried_without_losing_predictions(
    services: dict[str, str], ns: str, model_dir: Path
) -> None:
    art = load_artifact(model_dir)
    df = make_panel(20, 5, 5, seed=8)
    events = synthetic_events(df)
    store = LosesFirstReply(RedisStateStore.from_url(services["redis_url"], ns))
    handler = BatchHandler(Predictor(art.model, art.version, store), retry_initial_s=0.01)  # type: ignore[arg-type]
    msgs = raw_messages(events)
    out = await handler.handle(msgs)
    assert out.retries == 1 and store.lost == 1
    assert len(out.predictions) == len(events)
    check_predictions(out.predictions, expected_by_entity(art.model, df))
    await store.aclose()


async def test_a_redis_error_that_is_not_an_outage_is_not_retried(
    services: dict[str, str], ns: str
) -> None:
    store = RedisStateStore.from_url(services["redis_url"], ns)
    await store.redis.rpush(store.key("x"), "a list, not a state")
    with pytest.raises(StateError, match="WRONGTYPE") as info:
        await store.put_many([("x", b"STRM" + b"\0" * 76)])
    assert not isinstance(info.value, StoreUnavailable)
    await store.aclose()


async def test_timestamps_going_backwards_are_applied_in_offset_order(
    services: dict[str, str], ns: str, model_dir: Path
) -> None:
    """Policy: the order of an entity's events is their offset order; ``ds`` is carried, not sorted."""
    art = load_artifact(model_dir)
    ds = ["2020-01-05", "2020-01-03", "2020-01-04", "2019-12-31", "2020-01-06"]
    ys = [3.0, 1.0, 2.0, 0.5, 4.0]
    events = [Event("e", d, y, (), 0, i) for i, (d, y) in enumerate(zip(ds, ys, strict=True))]
    pred = Predictor(art.model, art.version, RedisStateStore.from_url(services["redis_url"], ns))
    out = await pred.step_many(events)
    assert [p.ds for p in out] == ds and [p.step for p in out] == [1, 2, 3, 4, 5]
    series = Series("e", ds, np.array(ys), np.zeros((5, 0)))
    fc, _, _ = offline_predict(art.model, series)
    np.testing.assert_allclose([p.served for p in out], fc, rtol=1e-5, atol=1e-5)
    await pred.aclose()


async def test_a_state_from_another_model_version_of_the_same_shape_is_kept(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    old_dir = tmp_path / "old"
    save_artifact(make_model(seed=99), old_dir)
    old, new = load_artifact(old_dir), load_artifact(model_dir)
    assert old.version != new.version
    df = make_panel(5, 8, 8, seed=13)
    events = synthetic_events(df)
    store = RedisStateStore.from_url(services["redis_url"], ns)
    await Predictor(old.model, old.version, store).step_many(events[:20])
    report = await Predictor(new.model, new.version, store).process(events[20:])
    assert report.resets == 0 and report.applied == len(events) - 20
    assert all(p.model_version == new.version and p.step > 1 for p in report.predictions)
    rec = decode((await store.get_many(["e0000"]))[0])  # type: ignore[arg-type]
    assert rec.model_version == new.version and rec.step == 8
    await store.aclose()


class RacedByAnotherWorker(WrappedStore):
    """Just before the first write, another worker applies the same events."""

    def __init__(self, inner: RedisStateStore, other: Predictor, events: list[Event]):
        super().__init__(inner)
        self.other, self.events, self.raced = other, events, False

    async def put_many(self, items, bases=None, outbox=()):  # type: ignore[no-untyped-def]
        if not self.raced:
            self.raced = True
            self.winner = await self.other.process(self.events)
        return await self.inner.put_many(items, bases, outbox)


async def test_a_refused_save_re_emits_the_winners_predictions(
    services: dict[str, str], ns: str, model_dir: Path
) -> None:
    art = load_artifact(model_dir)
    df = make_panel(10, 6, 6, seed=14)
    events = synthetic_events(df)
    other = Predictor(art.model, art.version, RedisStateStore.from_url(services["redis_url"], ns))
    store = RacedByAnotherWorker(RedisStateStore.from_url(services["redis_url"], ns), other, events)
    handler = BatchHandler(Predictor(art.model, art.version, store))  # type: ignore[arg-type]
    msgs = raw_messages(events)
    out = await handler.handle(msgs)
    assert store.winner.applied == len(events)
    assert out.report.rejected == len(df.unique_id.unique())
    assert out.predictions == store.winner.predictions, "every event, the winner's values"
    await store.aclose()
    await other.aclose()


async def test_a_stale_cached_state_is_refused_by_redis_evicted_and_read_again(
    services: dict[str, str], ns: str, model_dir: Path
) -> None:
    art = load_artifact(model_dir)
    df = make_panel(10, 6, 6, seed=15)
    events = synthetic_events(df)
    expected = expected_by_entity(art.model, df)
    url = services["redis_url"]
    cached = Predictor(
        art.model, art.version, RedisStateStore.from_url(url, ns), cache=StateCache(2**20)
    )
    handler = BatchHandler(cached)
    await handler.handle(raw_messages(events[:20]))
    assert len(cached.cache) == 10  # type: ignore[arg-type]
    # Another worker (the partitions moved, then came back) steps the entities further.
    other = Predictor(art.model, art.version, RedisStateStore.from_url(url, ns))
    winner = await other.process(events[20:])
    # From its stale cache this worker's saves are refused; it evicts, reads Redis, skips what
    # the other worker applied and sends that worker's predictions again.
    out = await handler.handle(raw_messages(events[20:40]))
    assert out.report.rejected == 10
    assert out.predictions == winner.predictions[:20]
    stored = await cached.store.get_many(list(expected))
    assert not len(cached.cache.get_many(list(expected)))  # type: ignore[union-attr]
    for uid, raw in zip(expected, stored, strict=True):
        rec = decode(raw)  # type: ignore[arg-type]
        np.testing.assert_allclose(rec.h, expected[uid].h, atol=1e-5, rtol=0)
    await cached.aclose()
    await other.aclose()


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("raced", [False, True])
async def test_a_batch_stepped_while_the_one_before_is_saved_equals_nn_lstm(
    services: dict[str, str], ns: str, model_dir: Path, raced: bool, cached: bool
) -> None:
    art = load_artifact(model_dir)
    df = make_panel(10, 9, 9, seed=16)
    events = synthetic_events(df)
    expected = expected_by_entity(art.model, df)
    url = services["redis_url"]
    other = Predictor(art.model, art.version, RedisStateStore.from_url(url, ns))
    # Raced: another worker applies the first 40 events before our first save (of 30) lands.
    store = RacedByAnotherWorker(
        RedisStateStore.from_url(url, ns), other, events[:40] if raced else []
    )
    cache = StateCache(2**20) if cached else None
    handler = BatchHandler(Predictor(art.model, art.version, store, cache=cache))  # type: ignore[arg-type]
    batches = [events[i : i + 30] for i in range(0, len(events), 30)]
    # Every batch begins before the one before it is saved: each steps on from the states of
    # the one before, read from memory; after a refused save the next batch steps again.
    futures = [await handler.begin(raw_messages(b)) for b in batches]
    outcomes = [await f for f in futures]
    out = [p for o in outcomes for p in o.predictions]
    assert [(p.partition, p.offset) for p in out] == [(e.partition, e.offset) for e in events]
    assert check_predictions(out, expected) == len(events)
    assert outcomes[0].report.rejected == (10 if raced else 0)
    for uid, raw in zip(expected, await store.get_many(list(expected)), strict=True):
        rec = decode(raw)  # type: ignore[arg-type]
        assert rec.step == 9
        np.testing.assert_allclose(rec.h, expected[uid].h, atol=1e-5, rtol=0)
        np.testing.assert_allclose(rec.c, expected[uid].c, atol=1e-5, rtol=0)
    await store.aclose()
    await other.aclose()
