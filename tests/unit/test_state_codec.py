from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streamer.errors import StateCodecError
from streamer.state import HEADER, StateRecord, decode, encode


def record(dtype: str = "float32", layers: int = 2, hidden: int = 16, seed: int = 0) -> StateRecord:
    rng = np.random.default_rng(seed)
    return StateRecord(
        h=rng.standard_normal((layers, hidden)).astype(np.float32),
        c=(rng.standard_normal((layers, hidden)) * 5).astype(np.float32),
        model_version="abc123def456",
        step=12345,
        partition=3,
        offset=2**40 + 17,
        updated_ms=1_700_000_000_123,
        count=441.0,
        mean=2564.61060902703,
        var=112819.954337592,
        dtype=dtype,  # type: ignore[arg-type]
    )


def test_float32_round_trip_is_exact() -> None:
    rec = record()
    back = decode(encode(rec))
    np.testing.assert_array_equal(back.h, rec.h)
    np.testing.assert_array_equal(back.c, rec.c)
    for f in (
        "model_version",
        "step",
        "partition",
        "offset",
        "updated_ms",
        "count",
        "mean",
        "var",
        "dtype",
    ):
        assert getattr(back, f) == getattr(rec, f), f
    assert len(encode(rec)) == HEADER.size + 2 * 2 * 16 * 4 + 6  # + an empty outputs section


@pytest.mark.parametrize(("dtype", "rtol"), [("float16", 1e-3), ("bfloat16", 8e-3)])
def test_compact_dtypes_round_trip_within_their_precision(dtype: str, rtol: float) -> None:
    rec = record(dtype)
    raw = encode(rec)
    assert len(raw) == HEADER.size + 2 * 2 * 16 * 2 + 6
    back = decode(raw)
    assert back.dtype == dtype
    np.testing.assert_allclose(back.h, rec.h, rtol=rtol, atol=1e-3)
    np.testing.assert_allclose(back.c, rec.c, rtol=rtol, atol=1e-2)


def test_fence_fields_sit_where_the_lua_script_reads_them() -> None:
    raw = encode(record())
    assert raw[:4] == b"STRM"
    assert int.from_bytes(raw[36:40], "little", signed=True) == 3
    assert int.from_bytes(raw[40:48], "little", signed=True) == 2**40 + 17


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:40], "shorter than its header"),
        (lambda b: b"XXXX" + b[4:], "not a streamer state record"),
        (lambda b: b[:4] + bytes([9]) + b[5:], "format version 9"),
        (lambda b: b[:5] + bytes([7]) + b[6:], "dtype code 7"),
        (lambda b: b[:-4], "header says"),
    ],
)
def test_bad_bytes_raise_a_codec_error(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StateCodecError, match=message):
        decode(mutate(encode(record())))


def test_model_version_longer_than_16_bytes_is_refused() -> None:
    rec = record()
    bad = StateRecord(**{**{f: getattr(rec, f) for f in rec.__slots__}, "model_version": "x" * 17})  # type: ignore[attr-defined]
    with pytest.raises(StateCodecError, match="longer than 16"):
        encode(bad)


def test_kept_outputs_round_trip_exactly() -> None:
    rng = np.random.default_rng(1)
    rec = dataclasses.replace(
        record(),
        out_offsets=np.array([7, 9, 2**40], np.int64),
        out_steps=np.array([3, 4, 5], np.int64),
        out_forecasts=rng.standard_normal((3, 12)) * 1e3,
    )
    back = decode(encode(rec))
    np.testing.assert_array_equal(back.out_offsets, rec.out_offsets)
    np.testing.assert_array_equal(back.out_steps, rec.out_steps)
    np.testing.assert_array_equal(back.out_forecasts, rec.out_forecasts)  # float64: bit for bit


def test_format_1_records_are_still_read() -> None:
    raw = bytearray(encode(record()))[:-6]  # format 1 had no outputs section
    raw[4] = 1
    back = decode(bytes(raw))
    assert back.offset == 2**40 + 17 and len(back.out_offsets) == 0
