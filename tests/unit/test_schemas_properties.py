"""Property tests: the decoder never raises, and refuses hostile input with a known reason."""

from __future__ import annotations

import json
import math

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.schemas import (
    DeadLetter,
    Event,
    _decode_checked,
    _plain,
    decode_event,
)
from tests.hostile import REASONS, hostile_message


@settings(max_examples=500, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=20)),
    value=st.one_of(st.none(), st.binary(max_size=300)),
)
def test_arbitrary_bytes_never_raise(key: bytes | None, value: bytes | None) -> None:
    r = decode_event(key, value, 0, 0, ("a",))
    assert isinstance(r, Event | DeadLetter)
    if isinstance(r, DeadLetter):
        assert r.reason in REASONS and r.value == value and r.key == key


@settings(max_examples=500, deadline=None)
@given(msg=hostile_message(["e1", "e2"], max_bytes=4096))
def test_hostile_messages_are_dead_lettered_with_a_reason(
    msg: tuple[bytes | None, bytes | None],
) -> None:
    key, value = msg
    r = decode_event(key, value, 3, 7, (), max_bytes=4096)
    assert isinstance(r, DeadLetter), (msg, r)
    assert r.reason in REASONS and r.detail
    assert (r.key, r.value, r.partition, r.offset) == (key, value, 3, 7)


@settings(max_examples=300, deadline=None)
@given(
    uid=st.text(min_size=1, max_size=30),
    y=st.floats(allow_nan=False, allow_infinity=False, min_value=-1e30, max_value=1e30),
    f=st.floats(allow_nan=False, allow_infinity=False, min_value=-1e30, max_value=1e30),
)
def test_valid_events_always_decode(uid: str, y: float, f: float) -> None:
    raw = orjson.dumps({"unique_id": uid, "ds": "2024-01-01T00:00:00", "y": y, "f": f})
    r = decode_event(uid.encode(), raw, 0, 1, ("f",))
    assert isinstance(r, Event), r
    assert r.y == y and r.features == (f,) and math.isfinite(r.y)


_field_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**40), 10**40),
    st.floats(),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=800, deadline=None)
@given(
    key=st.one_of(st.none(), st.sampled_from([b"e1", b"", b"e2"])),
    body=st.dictionaries(
        st.sampled_from(["unique_id", "ds", "y", "f", "g", "Y"]),
        st.one_of(_field_value, st.sampled_from(["e1", "e2", "", "x" * 600, "2024-01"])),
        max_size=6,
    ),
    features=st.sampled_from([(), ("f",), ("f", "g")]),
)
def test_the_fast_path_decides_as_the_full_checks(
    key: bytes | None, body: dict[str, object], features: tuple[str, ...]
) -> None:
    try:
        raw = orjson.dumps(body)
    except TypeError:  # an int beyond 64 bits: not JSON orjson writes
        raw = json.dumps(body).encode()
    assert decode_event(key, raw, 1, 2, features) == _decode_checked(
        key, raw, 1, 2, features, 2**16
    )


@settings(max_examples=300, deadline=None)
@given(msg=hostile_message(["e1", "e2"], max_bytes=4096))
def test_the_fast_path_decides_hostile_input_as_the_full_checks(
    msg: tuple[bytes | None, bytes | None],
) -> None:
    key, value = msg
    assert decode_event(key, value, 3, 7, (), 4096) == _decode_checked(key, value, 3, 7, (), 4096)


def test_plain_events_take_the_fast_path() -> None:
    data = {"unique_id": "e1", "ds": "2024-01", "y": 3, "f": -1.5}
    raw = orjson.dumps(data)
    assert _plain(b"e1", raw, ("f",), 0, 9, 4096) == Event("e1", "2024-01", 3.0, (-1.5,), 0, 9)
    assert _plain(b"e1", orjson.dumps({**data, "y": True}), ("f",), 0, 9, 4096) is None
    # escapes and duplicated fields go through the full checks
    assert _plain(b"e1", raw.replace(b"2024-01", b"2024\\u002d01"), ("f",), 0, 9, 4096) is None
    assert _plain(b"e1", b'{"y":"a","y":1.5,"unique_id":"e1","ds":"d"}', (), 0, 9, 4096) is None
