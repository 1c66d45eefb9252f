"""Hypothesis strategies for input that is not a valid event, each with the reasons it may get."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import get_args

import orjson
from hypothesis import strategies as st

from streamer.schemas import Reason

REASONS = set(get_args(Reason))

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_not_a_number = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=10),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
)
_not_text = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.lists(st.text(), max_size=2),
)


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, UnicodeDecodeError):
        return False


@st.composite
def hostile_message(
    draw: st.DrawFn, entities: Sequence[str], max_bytes: int = 65536
) -> tuple[bytes | None, bytes | None]:
    """``(key, value)`` of a message that must be dead-lettered; keys are real entities."""
    uid = draw(st.sampled_from(list(entities)))
    good = {"unique_id": uid, "ds": "2020-06-01", "y": 1.5}
    kind = draw(
        st.sampled_from(
            [
                "bytes",
                "non_object",
                "wrong_type",
                "missing",
                "non_finite",
                "extra",
                "huge",
                "empty_key",
                "key_mismatch",
                "big_number",
            ]
        )
    )
    key: bytes | None = uid.encode()
    if kind == "bytes":
        value = draw(st.binary(max_size=200).filter(lambda b: not _is_json_object(b)))
    elif kind == "non_object":
        value = orjson.dumps(draw(st.one_of(_json_scalars, st.lists(_json_scalars, max_size=4))))
    elif kind == "wrong_type":
        field = draw(st.sampled_from(["unique_id", "ds", "y"]))
        bad = draw(_not_a_number if field == "y" else _not_text)
        value = orjson.dumps({**good, field: bad})
    elif kind == "missing":
        drop = draw(st.sets(st.sampled_from(["unique_id", "ds", "y"]), min_size=1))
        value = orjson.dumps({k: v for k, v in good.items() if k not in drop})
    elif kind == "non_finite":
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]))
        value = (
            b'{"unique_id": "'
            + uid.encode()
            + b'", "ds": "2020-06-01", "y": '
            + token.encode()
            + b"}"
        )
    elif kind == "extra":
        name = draw(st.text(min_size=1, max_size=8).filter(lambda n: n not in good))
        value = orjson.dumps({**good, name: draw(_json_scalars)})
    elif kind == "huge":
        value = orjson.dumps({**good, "pad": "x" * (max_bytes + draw(st.integers(1, 1000)))})
    elif kind == "empty_key":
        key = draw(st.sampled_from([None, b""]))
        value = orjson.dumps(good)
    elif kind == "key_mismatch":
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k != uid)).encode()
        value = orjson.dumps(good)
    else:  # big_number
        value = orjson.dumps({**good, "y": draw(st.sampled_from([1e31, -1e300, 3.4e38]))})
    return key, value
