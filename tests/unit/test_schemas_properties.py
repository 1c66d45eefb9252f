"""Property tests: the decoder never raises, and refuses hostile input with a known reason."""

from __future__ import annotations

import math

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.schemas import DeadLetter, Event, decode_event
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
