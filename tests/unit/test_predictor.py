"""The predictor on the in-memory store: no Redis, no Kafka, and on any device.

Every test here steps interleaved entities in random batches and holds each prediction and final
state to the torch module run over the whole series. The device is ``STREAMER_TEST_DEVICE``
(``cpu`` by default; ``bench/gpu_check.sh`` runs this file with ``cuda`` on a machine with an
NVIDIA GPU): all cells, forecasters and classifiers, float32, float16 and bfloat16 states, the
fused and the per-layer kernels, the GPU path's staging.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
import torch

from streamer.model import ModelSpec, SequenceModel, intervals
from streamer.schemas import Event, Prediction
from streamer.serve.pipeline import MAX_RERUNS, BatchHandler
from streamer.serve.predictor import Predictor, resolve_device
from streamer.state import MemoryStateStore, StateCache, decode
from streamer.state.codec import Dtype
from streamer.state.store import OutboxPart
from streamer.train.data import split_series
from streamer.train.nextevent import TokenSeries, offline_served
from streamer.train.offline import offline_predict, series_inputs
from tests.conftest import components, make_panel
from tests.reference import components_after, in_batches, raw_messages, synthetic_events

DEVICE = resolve_device(os.environ.get("STREAMER_TEST_DEVICE", "cpu"))
ON_GPU = DEVICE.type == "cuda"
if ON_GPU:  # full float32 matrix products, as on the CPU (TF32 would round at 1e-3)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

#: How close a streamed value must be to the reference: float32 states on the CPU are the torch
#: module's arithmetic; on a GPU (cuDNN's kernels, other summation orders) a little looser.
TOL = 1e-4 if ON_GPU else 1e-5
#: Compact states round h and c at every event: held to a reference that rounds the same way.
DTYPE_TOL = {"float32": TOL, "float16": 3e-3, "bfloat16": 2.5e-2}


def make(
    cell: str,
    task: str = "forecast",
    features: tuple[str, ...] = (),
    season: int | tuple[int, int] = 0,
) -> SequenceModel:
    """(``season``: a season's length, or two: a second season too.)"""
    torch.manual_seed(3)
    spec = ModelSpec(
        cell=cell,
        hidden_size=16,
        num_layers=2,
        horizon=3,
        features=features,
        feature_mean=tuple(0.5 for _ in features),
        feature_std=tuple(2.0 for _ in features),
        task=task,  # type: ignore[arg-type]
        classes=("down", "flat", "up") if task == "classify" else (),
        **components(*season) if isinstance(season, tuple) else components(season),  # type: ignore[arg-type]
    )
    model = SequenceModel(spec)
    with torch.no_grad():  # larger than default weights: states move far from zero
        for p in model.parameters():
            p.mul_(2.0)
    return model.eval()


#: the cached variants: room for every state, and for ten (records evicted and read again)
CACHES = {
    "cached": lambda: StateCache(2**24),
    "inline-cached": lambda: StateCache(2**24),
    "small-cache": lambda: StateCache(10 * 500),
}


def predictor(
    model: SequenceModel,
    store: MemoryStateStore,
    variant: str = "plain",
    dtype: Dtype = "float32",
) -> Predictor:
    pred = Predictor(
        model,
        "v1",
        store,
        device=DEVICE,
        state_dtype=dtype,
        cache=CACHES[variant]() if variant in CACHES else None,
        fused_cell_from={"fused": 1, "per-layer": 0}.get(variant),
    )
    if variant == "staged":  # the GPU path's one packed buffer each way, also on the CPU
        pred.staged = True
    return pred


def reference(
    model: SequenceModel, df: pd.DataFrame, dtype: Dtype
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per entity: each event's served output ``(T, K)`` and the final h, c, on the CPU. Float32:
    the module over the whole series (the fused sequence kernel). Compact dtypes: one step at a
    time, h and c rounded to the dtype after every event, as a stored state is."""
    cpu = model.to("cpu")
    out = {}
    for s in split_series(df, list(model.spec.features)):
        if dtype == "float32":
            out[s.unique_id] = offline_predict(cpu, s)
            continue
        x, mean, scale = series_inputs(s, model.spec)
        torch_dtype = getattr(torch, dtype)
        h, c = cpu.rnn.zero_state(1)
        rows = []
        with torch.no_grad():
            for t in range(len(x)):
                raw, (h, c) = cpu.step(torch.from_numpy(x[t : t + 1]), (h, c))
                h, c = h.to(torch_dtype).float(), c.to(torch_dtype).float()
                rows.append(cpu.serve(raw)[0].numpy().astype(np.float64))
        fc = np.stack(rows)
        if model.spec.task == "forecast":
            fc = fc * scale[:, None] + mean
            spec = model.spec
            fc = intervals.served(
                fc, scale, np.asarray(spec.interval_lo), np.asarray(spec.interval_hi)
            )
        out[s.unique_id] = (fc, h[:, 0].numpy(), c[:, 0].numpy())
    return out


def check(
    preds: list[Prediction],
    ref: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    tol: float,
) -> None:
    for p in preds:
        np.testing.assert_allclose(
            p.served, ref[p.unique_id][0][p.step - 1], rtol=tol, atol=tol, err_msg=p.unique_id
        )


async def check_states(
    store: MemoryStateStore, ref: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], tol: float
) -> None:
    raws = await store.get_many(list(ref))
    for uid, raw in zip(ref, raws, strict=True):
        assert raw is not None
        rec = decode(raw)
        fc, h, c = ref[uid]
        assert rec.step == len(fc)
        np.testing.assert_allclose(rec.h, h, atol=tol, rtol=tol)
        np.testing.assert_allclose(rec.c, c[: len(rec.c)], atol=tol, rtol=tol)


async def check_components(store: MemoryStateStore, spec: ModelSpec, df: pd.DataFrame) -> None:
    """Every entity's stored components are those of its whole series, bit for bit."""
    series = split_series(df)
    raws = await store.get_many([s.unique_id for s in series])
    for s, raw in zip(series, raws, strict=True):
        assert raw is not None
        np.testing.assert_array_equal(decode(raw).comp, components_after(spec, s.y))


class InlineStore(MemoryStateStore):
    """A store without an outbox (as Redis Cluster): kept predictions go inside the records."""

    outbox = False


@pytest.mark.parametrize(
    "variant",
    ["plain", "cached", "small-cache", "fused", "per-layer", "staged", "inline", "inline-cached"],
)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("season", [0, 5, (3, 12)])
async def test_stepping_equals_the_module_per_entity(
    cell: str, variant: str, season: int | tuple[int, int]
) -> None:
    """(``season``: a forecaster with level and seasonal components in its state; two: with a
    second season.)"""
    model = make(cell, features=("temp",), season=season)
    df = make_panel(60, 3, 30, seed=1, features=("temp",))
    events = synthetic_events(df)
    ref = reference(model, df, "float32")
    store = InlineStore() if variant.startswith("inline") else MemoryStateStore()
    pred = predictor(model.to(DEVICE), store, variant)
    half = len(events) // 2
    out = await in_batches(pred, events[:half], seed=2)
    # A restart: nothing in memory, the store has it all.
    pred = predictor(model.to(DEVICE), store, variant)
    out += await in_batches(pred, events[half:], seed=3)
    assert sorted((p.partition, p.offset) for p in out) == sorted(
        (e.partition, e.offset) for e in events
    )
    check(out, ref, TOL)
    await check_states(store, ref, TOL)
    await check_components(store, model.spec, df)
    # A replay of everything applies nothing and sends the kept predictions again, bit for bit.
    before = await store.get_many(list(ref))
    again = await pred.process(events)
    assert again.applied == 0 and again.reemitted == len(events)
    by_id = {(p.partition, p.offset): p for p in out}
    assert all(p == by_id[(p.partition, p.offset)] for p in again.predictions)
    assert await store.get_many(list(ref)) == before
    if pred.cache is not None:  # (the states came from the cache: the test is about it)
        assert pred.cache.hits > (0 if variant == "small-cache" else len(ref))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
async def test_compact_states_round_as_the_reference_does(cell: str, dtype: Dtype) -> None:
    model = make(cell)
    df = make_panel(40, 3, 25, seed=4)
    events = synthetic_events(df)
    ref = reference(model, df, dtype)
    store = MemoryStateStore()
    out = await in_batches(predictor(model.to(DEVICE), store, "fused", dtype), events, seed=5)
    assert len(out) == len(events)
    check(out, ref, DTYPE_TOL[dtype])
    await check_states(store, ref, DTYPE_TOL[dtype])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
async def test_classifier_probabilities_equal_the_module(cell: str) -> None:
    model = make(cell, task="classify")
    df = make_panel(30, 3, 20, seed=6)
    ref = reference(model, df, "float32")
    store = MemoryStateStore()
    out = await in_batches(predictor(model.to(DEVICE), store), synthetic_events(df), seed=7)
    check(out, ref, TOL)
    assert all(abs(sum(p.values) - 1) < 1e-5 and p.label in p.classes for p in out)


async def test_fused_and_per_layer_kernels_agree_on_large_batches() -> None:
    """The two kernels over the same 4,096 entities, many waves: the same predictions."""
    model = make("lstm").to(DEVICE)
    df = make_panel(4096, 2, 4, seed=8)
    events = synthetic_events(df)
    a = await predictor(model, MemoryStateStore(), "fused").step_many(events)
    b = await predictor(model, MemoryStateStore(), "per-layer").step_many(events)
    assert [(p.unique_id, p.step) for p in a] == [(p.unique_id, p.step) for p in b]
    np.testing.assert_allclose(
        np.array([p.values for p in a]), np.array([p.values for p in b]), rtol=TOL, atol=TOL
    )


async def test_a_write_refused_by_the_store_gives_no_prediction_and_is_counted() -> None:
    """Another writer saved the entity after this predictor read it: the save is refused, the
    events get no prediction from here, and the store keeps the other writer's state."""
    model = make("lstm")
    df = make_panel(3, 6, 6, seed=9)
    events = synthetic_events(df)
    store = MemoryStateStore()
    pred = predictor(model, store)
    pending = await pred.prepare(events[:6])
    other = MemoryStateStore()  # another worker applied some of them first
    await predictor(model, other).step_many(events[:3])
    taken = {ev.unique_id for ev in events[:3]}
    for e in taken:
        (raw,) = await other.get_many([e])
        assert raw is not None
        store.set_raw(e, raw)
    report = await pred.commit(pending)
    assert sorted(report.rejected_entities) == sorted(taken)
    assert {p.unique_id for p in report.predictions}.isdisjoint(taken)
    assert report.applied == sum(1 for ev in events[:6] if ev.unique_id not in taken)
    assert await store.get_many(sorted(taken)) == await other.get_many(sorted(taken))


# ------------------------------------------------------------------ partitions and contention --


def moved(events: list[Event], entity: str, partition: int) -> list[Event]:
    """The events of one entity sent to another partition (as a CRC32-hashing producer would),
    with that partition's offsets."""
    out, nxt = [], 1000
    for e in events:
        if e.unique_id == entity:
            e = Event(e.unique_id, e.ds, e.y, e.features, partition, nxt)
            nxt += 1
        out.append(e)
    return out


async def test_events_of_an_entity_on_another_partition_are_dead_lettered() -> None:
    model = make("lstm")
    df = make_panel(4, 8, 8, seed=10)
    events = synthetic_events(df, partitions=2)
    first, second = events[:16], events[16:]
    handler = BatchHandler(predictor(model, MemoryStateStore()))
    got = await handler.handle(raw_messages(first))
    assert len(got.outputs) == 16 and not got.dead_letters
    # e0001's later events arrive on the other partition: refused with their reason, nothing else
    # changes; every event gets a prediction or a dead letter
    other = 1 - next(e.partition for e in first if e.unique_id == "e0001")
    batch = moved(second, "e0001", other)
    got = await handler.handle(raw_messages(batch))
    dead = [d for d in got.dead_letters if d.reason == "partition_conflict"]
    assert sorted(d.offset for d in dead) == sorted(
        e.offset for e in batch if e.unique_id == "e0001"
    )
    assert f"belongs to partition {1 - other}" in dead[0].detail
    assert {p.unique_id for p in got.predictions} == {"e0000", "e0002", "e0003"}
    assert len(got.outputs) + len(got.dead_letters) == len(batch)
    assert got.report.applied == len(batch) - len(dead)
    (raw_state,) = await handler.predictor.store.get_many(["e0001"])
    assert raw_state is not None and decode(raw_state).step == 4


async def test_a_calendar_model_dead_letters_an_event_whose_ds_is_not_a_time() -> None:
    """The model reads inputs from ds: an event whose ds is no time goes to the dead letters
    (``not_a_time``) and changes no state; the entity's other events step as if it never came."""
    torch.manual_seed(5)
    model = SequenceModel(
        ModelSpec(hidden_size=8, num_layers=2, horizon=2, calendar=("hour", "weekday"))
    ).eval()
    df = make_panel(3, 8, 8, seed=12)
    df["ds"] = df["ds"] + pd.to_timedelta(np.arange(len(df)) % 24, unit="h")
    events = synthetic_events(df)
    bad_at = [i for i, e in enumerate(events) if e.unique_id == "e0001"][4]  # its 5th event
    bad = events[bad_at]
    sent = list(events)
    sent[bad_at] = Event(bad.unique_id, "last tuesday", bad.y, (), bad.partition, bad.offset)
    handler = BatchHandler(predictor(model, MemoryStateStore()))
    got = await handler.handle(raw_messages(sent))
    (dead,) = got.dead_letters
    assert dead.reason == "not_a_time" and "'last tuesday'" in dead.detail
    assert dead.offset == bad.offset and b"last tuesday" in (dead.value or b"")
    assert len(got.outputs) == len(events) - 1
    # e0001 stepped over its other events only: as the offline pass over the series without it
    kept = df.drop(index=df.index[df.unique_id == "e0001"][4])
    expected = {s.unique_id: offline_predict(model, s)[0] for s in split_series(kept)}
    for p in got.predictions:
        np.testing.assert_allclose(p.served, expected[p.unique_id][p.step - 1], atol=1e-5)
    (raw_state,) = await handler.predictor.store.get_many(["e0001"])
    assert raw_state is not None and decode(raw_state).step == 7


async def test_a_takeover_moves_the_entity_to_the_new_partition() -> None:
    model = make("lstm")
    df = make_panel(2, 6, 6, seed=11)
    events = synthetic_events(df, partitions=1)
    store = MemoryStateStore()
    await BatchHandler(predictor(model, store)).handle(raw_messages(events[:6]))
    pred = Predictor(model, "v1", store, on_partition_change="takeover")
    got = await BatchHandler(pred).handle(raw_messages(moved(events[6:], "e0000", 3)))
    assert not got.dead_letters and len(got.outputs) == 6
    (raw_state,) = await store.get_many(["e0000"])
    assert raw_state is not None and decode(raw_state).partition == 3


class Contended(MemoryStateStore):
    """A store whose record of some entities another writer changes before every write of ours
    (a zombie that never stops): each of our writes for them is refused."""

    def __init__(self, hot: set[str]):
        super().__init__()
        self.hot = hot
        self.changes = 0

    async def put_many(
        self,
        items: Sequence[tuple[str, bytes]],
        bases: Sequence[bytes] | None = None,
        outbox: Sequence[OutboxPart] = (),
    ) -> list[bool]:
        for e, _ in items:
            if e in self.hot:
                (cur,) = await self.get_many([e])
                if cur is not None:  # the other writer's version: same fence, another time
                    self.changes += 1
                    self.set_raw(e, cur[:48] + self.changes.to_bytes(8, "little") + cur[56:])
        return await super().put_many(items, bases, outbox)


async def test_events_whose_state_keeps_changing_are_dead_lettered_never_dropped() -> None:
    model = make("lstm")
    df = make_panel(3, 5, 5, seed=12)
    events = synthetic_events(df, partitions=1)
    store = Contended({"e0002"})
    handler = BatchHandler(predictor(model, store), retry_initial_s=0.001)
    await handler.handle(raw_messages(events[:3]))  # every entity has a state
    # the first three again (a replay: skipped, their predictions re-emitted), then the rest
    got = await handler.handle(raw_messages(events))
    contended = [d for d in got.dead_letters if d.reason == "contended"]
    assert sorted(d.offset for d in contended) == [
        e.offset for e in events[3:] if e.unique_id == "e0002"
    ]
    assert {p.unique_id for p in got.predictions} == {"e0000", "e0001", "e0002"}
    answered = [(p.partition, p.offset) for p in got.predictions]
    answered += [(d.partition, d.offset) for d in got.dead_letters]
    assert sorted(answered) == sorted((e.partition, e.offset) for e in events)  # each once
    assert store.changes == 1 + MAX_RERUNS  # the batch, then every run again: all refused


async def test_states_at_rest_hold_only_what_the_model_needs() -> None:
    """Kept predictions live in the outbox until their offsets are committed; after the trim a
    worker at rest does, the store holds the states alone: header, h and c."""
    model = make("lstm")
    df = make_panel(20, 5, 12, seed=13)
    events = synthetic_events(df)
    store = MemoryStateStore()
    pred = predictor(model, store)
    await in_batches(pred, events, seed=14)
    raws = await store.get_many(sorted(df.unique_id.unique()))
    header_h_c = 80 + 2 * 2 * 16 * 4
    assert all(r is not None and len(r) == header_h_c + 6 for r in raws)  # (+ an empty tail)
    assert all(len(decode(r).out_offsets) == 0 for r in raws if r is not None)
    parts = sorted({e.partition for e in events})
    assert all([await store.kept(p, 0) for p in parts])  # nothing committed yet: all kept
    committed = {p: max(e.offset for e in events if e.partition == p) + 1 for p in parts}
    await pred.trim(committed)
    assert not any([await store.kept(p, 0) for p in parts])


def _token_events(entities: int = 25, length: int = 18, seed: int = 4) -> list[Event]:
    """Interleaved events of entities with a categorical ``key`` (values the vocabulary holds,
    one it does not, and nulls), a second categorical ``tag`` and a numeric feature."""
    rng = np.random.default_rng(seed)
    rows = [(f"e{e}", t) for e in range(entities) for t in range(length)]
    order = rng.permutation(len(rows))
    offsets = [0, 0, 0]
    events = []
    seen: dict[str, int] = {}
    for i in order.tolist():
        uid, _ = rows[i]
        t = seen.get(uid, 0)
        seen[uid] = t + 1
        p = int(uid[1:]) % 3
        key = rng.choice([*(f"k{j}" for j in range(12)), "unseen", None])  # type: ignore[list-item]
        tag = rng.choice(["a", "b", None])  # type: ignore[list-item]
        events.append(
            Event(
                uid,
                f"2024-01-01T00:{t:02d}",
                float("nan"),
                (float(rng.normal()),),
                p,
                offsets[p],
                (key, tag),
            )
        )
        offsets[p] += 1
    return events


def _token_series(events: list[Event]) -> dict[str, TokenSeries]:
    by: dict[str, list[Event]] = {}
    for e in events:
        by.setdefault(e.unique_id, []).append(e)
    return {
        uid: TokenSeries(
            uid,
            [e.ds for e in evs],
            {"key": [e.categories[0] for e in evs], "tag": [e.categories[1] for e in evs]},
            np.array([e.features for e in evs]),
        )
        for uid, evs in by.items()
    }


@pytest.mark.parametrize(
    "variant",
    ["plain", "cached", "fused", "per-layer", "staged", "inline", "hashed", "grouped", "exact"],
)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
async def test_next_event_predictions_equal_the_module_per_entity(cell: str, variant: str) -> None:
    """The top values, their probabilities, each event's surprise and rank and the states of a
    next-event model, streamed in random batches across a restart, are the module's over each
    whole sequence; a replay re-emits them bit for bit."""
    from tests.unit.test_nextevent import next_model

    model = next_model(
        cell=cell,
        features=("temp",),
        hash_buckets=8 if variant == "hashed" else 0,
        groups=3 if variant in ("grouped", "exact") else 0,
        searched=1 if variant == "exact" else 2,
        exact=variant == "exact",
    )
    events = _token_events()
    series = _token_series(events)
    ref = {uid: offline_served(model, s) for uid, s in series.items()}
    store = InlineStore() if variant == "inline" else MemoryStateStore()
    pred = predictor(model.to(DEVICE), store, variant)
    half = len(events) // 2
    out = await in_batches(pred, events[:half], seed=2)
    pred = predictor(model.to(DEVICE), store, variant)
    out += await in_batches(pred, events[half:], seed=3)
    assert len(out) == len(events)
    vocab = model.spec.vocabularies[0]
    surprises = 0
    for p in out:
        want = ref[p.unique_id][0][p.step - 1]
        k = (len(want) - 2) // 2
        assert p.next == tuple(vocab[int(i) - 1] for i in want[:k]), p
        np.testing.assert_allclose(p.values, want[k : 2 * k], rtol=TOL, atol=TOL)
        if p.step == 1:
            assert p.surprise is None and p.rank is None
        else:
            assert p.surprise is not None and p.surprise > 0
            np.testing.assert_allclose(p.surprise, want[-2], rtol=TOL, atol=TOL)
            surprises += 1
            assert p.rank == (None if want[-1] != want[-1] else int(want[-1]))
    assert surprises == len(events) - len(series)
    raws = await store.get_many(list(ref))
    for uid, raw in zip(ref, raws, strict=True):
        assert raw is not None
        rec = decode(raw)
        _, h, c, comp = ref[uid]
        np.testing.assert_allclose(rec.h, h, atol=TOL, rtol=TOL)
        np.testing.assert_allclose(rec.c, c[: len(rec.c)], atol=TOL, rtol=TOL)
        np.testing.assert_allclose(rec.comp, comp, atol=TOL, rtol=TOL)
    again = await pred.process(events)
    assert again.applied == 0 and again.reemitted == len(events)
    by_id = {(p.partition, p.offset): p for p in out}
    assert all(p.to_json() == by_id[(p.partition, p.offset)].to_json() for p in again.predictions)


async def test_values_out_of_vocabulary_are_stepped_and_counted_per_column() -> None:
    from tests.unit.test_nextevent import next_model

    model = next_model()
    pred = predictor(model.to(DEVICE), MemoryStateStore())
    cats = [("k1", "a"), ("new", "b"), (None, "zzz"), ("k2", None), ("k3", "a")]
    events = [Event(f"e{i}", "d", float("nan"), (), 0, i, c) for i, c in enumerate(cats)]
    report = await pred.process(events)
    assert report.applied == 5 and not report.conflicts.size
    assert report.out_of_vocabulary == {"key": 2, "tag": 2}
