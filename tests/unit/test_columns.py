"""The columnar decoder and encoder against the one-message ones they replace on the hot path."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.schemas import DeadLetter, Event, Prediction, decode_event
from streamer.serve.columns import EventColumns, decode_columns
from streamer.serve.outputs import Outputs, OutputShape, encode_outputs
from streamer.serve.pipeline import RawMessage
from tests.hostile import hostile_message
from tests.unit.test_schemas import HOSTILE

_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**40), 10**40),
    st.floats(),
    st.text(max_size=3),
    st.sampled_from(["e1", "e2", "2024-01", 'q"uote', "back\\slash", "\u00e9t\u00e9"]),
)


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes | None, bytes | None]:
    if draw(st.booleans()):
        return draw(hostile_message(["e1", "e2"], max_bytes=4096))
    body = draw(
        st.fixed_dictionaries(
            {"unique_id": st.sampled_from(["e1", "e2", 'q"uote']), "ds": st.just("2024")},
            optional={"y": _value, "f": _value, "g": _value},
        )
    )
    try:
        raw = orjson.dumps(body)
    except TypeError:  # an int beyond 64 bits
        raw = json.dumps(body).encode()
    if draw(st.booleans()):
        raw = json.dumps(body, indent=draw(st.sampled_from([None, 1]))).encode()
    key = draw(st.sampled_from([b"e1", b"e2", b'q"uote', None]))
    return key, raw


@settings(max_examples=600, deadline=None)
@given(msgs=st.lists(messages(), max_size=14), features=st.sampled_from([(), ("f",), ("f", "g")]))
def test_a_batch_decodes_as_its_messages_one_by_one(
    msgs: list[tuple[bytes | None, bytes | None]], features: tuple[str, ...]
) -> None:
    raw = [RawMessage(k, v, 1, 10 + i) for i, (k, v) in enumerate(msgs)]
    one_by_one = [decode_event(k, v, 1, 10 + i, features, 4096) for i, (k, v) in enumerate(msgs)]
    cols, dead = decode_columns(raw, features, 4096)
    assert cols.events() == [r for r in one_by_one if isinstance(r, Event)]
    assert dead == [r for r in one_by_one if isinstance(r, DeadLetter)]
    assert cols.source.tolist() == [i for i, r in enumerate(one_by_one) if isinstance(r, Event)]
    assert cols.features.shape == (len(cols), len(features))


def test_plain_events_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain events (ints, floats, non-ASCII ids, spaces, features in any order) never reach the
    full checks; they decode as those would."""
    import streamer.serve.columns as columns

    bodies = [
        {"unique_id": "e1", "ds": "2024-01", "y": 1, "g": -2.5, "f": 0.25},
        {"f": 1e-300, "unique_id": "\u00e9t\u00e9", "g": 3, "ds": "d" * 64, "y": -1e30},
        {"unique_id": "x" * 512, "ds": "2024", "y": 0.1, "f": 0, "g": 7},
    ]
    raw = [
        RawMessage(b["unique_id"].encode(), json.dumps(b, ensure_ascii=False).encode(), 3, i)
        for i, b in enumerate(bodies)
    ]
    want = [decode_event(m.key, m.value, 3, m.offset, ("f", "g")) for m in raw]

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a plain event took the full checks")

    monkeypatch.setattr(columns, "decode_event", refuse)
    cols, dead = decode_columns(raw, ("f", "g"))
    assert not dead and cols.events() == want


def test_the_hostile_kinds_are_refused_in_a_batch_too() -> None:
    raw = [RawMessage(k, v, 0, i) for i, (v, k, _, _) in enumerate(HOSTILE)]
    for feats in {f for _, _, f, _ in HOSTILE}:
        _, dead = decode_columns(raw, feats)
        want = [r for v, k, f, r in HOSTILE if f == feats]
        got = {d.offset: d.reason for d in dead}
        assert [got.get(i) for i, (_, _, f, _) in enumerate(HOSTILE) if f == feats] == want


def test_entities_are_interned_in_order_of_first_appearance() -> None:
    evs = [Event(e, "d", 1.0, (), 0, i) for i, e in enumerate(["b", "a", "b", "c", "a"])]
    cols = EventColumns.of(evs)
    assert cols.entities == ["b", "a", "c"] and cols.entity.tolist() == [0, 1, 0, 2, 1]
    sub = cols.take(np.array([3, 4]))
    assert sub.entities == ["a", "c"] and sub.entity.tolist() == [1, 0]
    assert sub.events() == [evs[3], evs[4]]


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=8),
            st.text(max_size=12),
            st.floats(allow_nan=False, allow_infinity=False, width=64),
            st.integers(0, 2**31 - 1),
            st.integers(0, 2**62),
            st.integers(1, 2**40),
            st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=3, max_size=3),
            st.sampled_from(["v1", "1cd2483550ce", "a\u00e9", "5%d"]),
            st.sampled_from([0, 0, 24]),
        ),
        max_size=20,
    ),
    classify=st.booleans(),
)
def test_predictions_are_encoded_as_to_json_byte_for_byte(rows: list, classify: bool) -> None:  # type: ignore[type-arg]
    classes = ("down", 'f"lat', "up") if classify else ()
    evs = [Event(u, d, y, (), p, o) for u, d, y, p, o, *_ in rows]
    cols = EventColumns.of(evs)
    out = Outputs(
        row=np.arange(len(rows), dtype=np.int64),
        step=np.array([r[5] for r in rows], np.int64),
        values=np.array([r[6] for r in rows], np.float64).reshape(len(rows), 3),
        version=[r[7] for r in rows],
        window=np.array([r[8] for r in rows], np.int64),
    )
    keys, values = encode_outputs(cols, out, OutputShape(classes))
    if rows:  # one version and no windows: the batch's template path
        same = Outputs(out.row, out.step, out.values, [rows[0][7]] * len(rows), 0 * out.window)
        want_same = [
            Prediction(u, d, y, p, o, rows[0][7], s, tuple(f), classes, 0)
            for u, d, y, p, o, s, f, *_ in rows
        ]
        assert encode_outputs(cols, same, OutputShape(classes))[1] == [
            p.to_json() for p in want_same
        ]
    want = [
        Prediction(u, d, y, p, o, v, s, tuple(f), classes, w) for u, d, y, p, o, s, f, v, w in rows
    ]
    assert values == [p.to_json() for p in want]
    assert keys == [p.unique_id.encode() for p in want]
    assert out.predictions(cols, OutputShape(classes)) == want


def test_forecasts_carry_their_times_when_the_frequency_is_known() -> None:
    """With the series' frequency the batch path writes each step's time, as the per-prediction
    path does; a time that does not parse gets none, and classifiers never."""
    evs = [
        Event("a", "2020-01-01", 1.0, (), 0, 1),
        Event("b", "2020-12-01", 2.0, (), 0, 2),
        Event("c", "not a time", 3.0, (), 1, 3),
        Event("d", "2020-01-01T06:00:00", 4.0, (), 1, 4),
    ]
    cols = EventColumns.of(evs)
    out = Outputs(
        row=np.arange(4, dtype=np.int64),
        step=np.ones(4, np.int64),
        values=np.array([[1.5, 2.5]] * 4),
        version=["v1"] * 4,
        window=np.zeros(4, np.int64),
    )
    _, values = encode_outputs(cols, out, OutputShape(freq="MS"))
    docs = [orjson.loads(v) for v in values]
    assert docs[0]["forecast_ds"] == ["2020-02-01", "2020-03-01"]
    assert docs[1]["forecast_ds"] == ["2021-01-01", "2021-02-01"]
    assert "forecast_ds" not in docs[2]
    assert docs[3]["forecast_ds"] == ["2020-02-01T06:00:00", "2020-03-01T06:00:00"]
    assert values == [p.to_json() for p in out.predictions(cols, OutputShape(freq="MS"))]
    _, plain = encode_outputs(cols, out)
    assert all("forecast_ds" not in orjson.loads(v) for v in plain)


def test_times_with_offsets_are_each_read_on_their_own() -> None:
    """Local times across a clock change (two offsets) beside times without one, in one batch:
    each is read by itself (an offset in UTC), whatever the others are; this batch once raised."""
    evs = [
        Event("a", "2024-03-31T01:30:00+01:00", 1.0, (), 0, 1),
        Event("b", "2024-03-31T03:30:00+02:00", 2.0, (), 0, 2),
        Event("c", "2024-03-31T05:00:00", 3.0, (), 1, 3),
        Event("d", "2024-03-31T05:00:00Z", 4.0, (), 1, 4),
    ]

    def outputs(n: int) -> Outputs:
        return Outputs(
            row=np.arange(n, dtype=np.int64),
            step=np.ones(n, np.int64),
            values=np.full((n, 1), 1.5),
            version=["v1"] * n,
            window=np.zeros(n, np.int64),
        )

    _, values = encode_outputs(EventColumns.of(evs), outputs(4), OutputShape(freq="h"))
    got = [orjson.loads(v)["forecast_ds"] for v in values]
    assert got == [
        ["2024-03-31T01:30:00"],
        ["2024-03-31T02:30:00"],
        ["2024-03-31T06:00:00"],
        ["2024-03-31T06:00:00"],
    ]
    for e, want in zip(evs, got, strict=True):  # the same alone as in the batch
        _, (alone,) = encode_outputs(EventColumns.of([e]), outputs(1), OutputShape(freq="h"))
        assert orjson.loads(alone)["forecast_ds"] == want


_category = st.one_of(
    st.none(),
    st.sampled_from(["k1", "k2", "", "\u00e9t\u00e9", 'q"uote', "back\\slash"]),
    st.integers(-5, 5),
    st.floats(),
    st.booleans(),
    st.just("x" * 10_000),
    st.just("y" * 1024),
    st.lists(st.just("k1"), max_size=1),
)


@st.composite
def token_messages(draw: st.DrawFn) -> tuple[bytes | None, bytes | None]:
    if draw(st.integers(0, 5)) == 0:
        return draw(hostile_message(["e1", "e2"], max_bytes=16_384))
    body = draw(
        st.fixed_dictionaries(
            {"unique_id": st.sampled_from(["e1", "e2"]), "ds": st.just("2024")},
            optional={"key": _category, "tag": _category, "f": _value, "y": _value},
        )
    )
    try:
        raw = orjson.dumps(body)
    except TypeError:  # an int beyond 64 bits
        raw = json.dumps(body).encode()
    if draw(st.booleans()):  # a field given twice
        raw = raw[:-1] + b',"key":"k2"}'
    return draw(st.sampled_from([b"e1", b"e2", None])), raw


@settings(max_examples=600, deadline=None)
@given(msgs=st.lists(token_messages(), max_size=12), features=st.sampled_from([(), ("f",)]))
def test_events_with_categorical_columns_decode_as_one_by_one(
    msgs: list[tuple[bytes | None, bytes | None]], features: tuple[str, ...]
) -> None:
    """A next-event model's events: text or null in the categorical columns (a number, a list
    or more than 1,024 characters is a dead letter), no y needed (NaN), a y given checked as a
    number; the batch decodes as the messages one by one, fast path or not."""
    cats = ("key", "tag")
    raw = [RawMessage(k, v, 1, 10 + i) for i, (k, v) in enumerate(msgs)]
    one_by_one = [
        decode_event(k, v, 1, 10 + i, features, 16_384, cats, target=False)
        for i, (k, v) in enumerate(msgs)
    ]
    cols, dead = decode_columns(raw, features, 16_384, cats)
    events = [r for r in one_by_one if isinstance(r, Event)]
    got = cols.events()
    assert len(got) == len(events)
    for a, b in zip(got, events, strict=True):  # (NaN != NaN: y compared apart)
        assert (a.unique_id, a.ds, a.features, a.categories) == (
            b.unique_id,
            b.ds,
            b.features,
            b.categories,
        )
        assert a.y == b.y or (a.y != a.y and b.y != b.y)
        assert all(c is None or (type(c) is str and len(c) <= 1024) for c in a.categories)
    assert dead == [r for r in one_by_one if isinstance(r, DeadLetter)]
    assert cols.source.tolist() == [i for i, r in enumerate(one_by_one) if isinstance(r, Event)]
    assert len(cols.categories) == 2 and all(len(c) == len(cols) for c in cols.categories)


def test_the_categorical_refusals_name_their_reasons() -> None:
    def reason(body: bytes) -> str | None:
        got = decode_event(b"e1", body, 0, 0, (), 65536, ("key",), target=False)
        return got.reason if isinstance(got, DeadLetter) else None

    assert reason(b'{"unique_id":"e1","ds":"d","key":"k"}') is None
    assert reason(b'{"unique_id":"e1","ds":"d","key":null}') is None
    assert reason(b'{"unique_id":"e1","ds":"d","key":3}') == "wrong_type"
    assert reason(b'{"unique_id":"e1","ds":"d","key":"%s"}' % (b"x" * 1025)) == "out_of_range"
    assert reason(b'{"unique_id":"e1","ds":"d"}') == "missing_field"
    assert reason(b'{"unique_id":"e1","ds":"d","key":"k","y":"no"}') == "wrong_type"
    assert reason(b'{"unique_id":"e1","ds":"d","key":"k","extra":1}') == "wrong_feature_count"


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["e1", "e\u00e9", 'q"']),
            st.integers(1, 2**40),
            st.lists(st.integers(1, 5), min_size=3, max_size=3, unique=True),
            st.lists(st.floats(0, 1), min_size=3, max_size=3),
            st.one_of(st.just(float("nan")), st.floats(0, 50)),
            st.one_of(st.just(float("nan")), st.integers(1, 3).map(float)),
        ),
        max_size=12,
    )
)
def test_next_event_predictions_are_encoded_as_to_json_byte_for_byte(rows: list) -> None:  # type: ignore[type-arg]
    vocab = ("m1", 'm"2', "m\u00e93", "m4", "m5")
    evs = [Event(u, "2024", float("nan"), (), 0, i, ("m1",)) for i, (u, *_) in enumerate(rows)]
    cols = EventColumns.of(evs)
    values = np.array([[*ids, *p, s, r] for _, _, ids, p, s, r in rows], np.float64)
    out = Outputs(
        row=np.arange(len(rows), dtype=np.int64),
        step=np.array([r[1] for r in rows], np.int64),
        values=values.reshape(len(rows), 8),
        version=["v1"] * len(rows),
        window=np.zeros(len(rows), np.int64),
    )
    shape = OutputShape(vocabulary=vocab)
    keys, encoded = encode_outputs(cols, out, shape)
    want = out.predictions(cols, shape)
    assert keys == [p.unique_id.encode() for p in want]
    assert encoded == [p.to_json() for p in want]
    for p, (u, step, ids, probs, s, r) in zip(want, rows, strict=True):
        assert p.next == tuple(vocab[i - 1] for i in ids) and p.step == step
        np.testing.assert_allclose(p.values, probs, rtol=1e-6)
        assert p.surprise == (None if s != s else s) and p.rank == (None if r != r else int(r))
        back = Prediction.from_json(p.to_json())
        assert (back.next, back.surprise, back.rank, back.unique_id) == (
            p.next,
            p.surprise,
            p.rank,
            u,
        )


def test_plain_token_events_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import streamer.serve.columns as columns

    bodies = [
        {"unique_id": "e1", "ds": "2024-01", "key": "m1", "tag": None, "f": 2},
        {"tag": "\u00e9t\u00e9", "unique_id": "e2", "f": -0.5, "ds": "d", "key": None},
        {"unique_id": "e3", "ds": "2024", "key": "x" * 1024, "tag": "", "f": 1e10},
    ]
    raw = [
        RawMessage(b["unique_id"].encode(), json.dumps(b, ensure_ascii=False).encode(), 3, i)
        for i, b in enumerate(bodies)
    ]
    want = [
        decode_event(m.key, m.value, 3, m.offset, ("f",), 65536, ("key", "tag"), target=False)
        for m in raw
    ]

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a plain event took the full checks")

    monkeypatch.setattr(columns, "decode_event", refuse)
    cols, dead = decode_columns(raw, ("f",), 65536, ("key", "tag"))
    got = cols.events()
    assert not dead and [(e.categories, e.features) for e in got] == [
        (e.categories, e.features) for e in want if isinstance(e, Event)
    ]
