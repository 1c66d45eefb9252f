from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streamer.errors import StateCodecError
from streamer.state.batch import StateBatch, bases, decode_many, encode_many, encode_rows, records
from streamer.state.codec import HEADER, StateRecord, base_of, decode, encode


def record(
    dtype: str = "float32", layers: int = 2, hidden: int = 16, seed: int = 0, tensors: int = 2
) -> StateRecord:
    rng = np.random.default_rng(seed)
    return StateRecord(
        h=rng.standard_normal((layers, hidden)).astype(np.float32),
        c=(rng.standard_normal((layers * (tensors - 1), hidden)) * 5).astype(np.float32),
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


def as_format(raw: bytes, fmt: int) -> bytes:
    """An LSTM record as an older format wrote it: layers was two bytes (S always 2)."""
    old = bytearray(raw)
    old[4], old[7] = fmt, 0
    return bytes(old if fmt > 1 else old[:-6])  # format 1 had no outputs section


@pytest.mark.parametrize("fmt", [1, 2])
def test_older_formats_are_still_read(fmt: int) -> None:
    rec = record()
    back = decode(as_format(encode(rec), fmt))
    assert back.offset == 2**40 + 17 and len(back.out_offsets) == 0
    np.testing.assert_array_equal(back.c, rec.c)


def test_a_state_of_one_tensor_stores_h_alone() -> None:
    rec = record(tensors=1)  # a GRU or plain RNN state
    raw = encode(rec)
    assert len(raw) == HEADER.size + 2 * 16 * 4 + 6 and raw[7] == 1
    back = decode(raw)
    np.testing.assert_array_equal(back.h, rec.h)
    assert back.c.shape == (0, 16)


# ------------------------------------------------------------------------------ whole batches --


def batch_records(
    dtype: str, u: int, horizon: int, seed: int, tensors: int = 2, components: int = 0
) -> list[StateRecord]:
    """Records as the predictor writes them: same shape and dtype, 0 to 3 kept outputs each."""
    rng = np.random.default_rng(seed)
    out = []
    for j in range(u):
        n = int(rng.integers(0, 4))
        out.append(
            dataclasses.replace(
                record(dtype, seed=seed * 1000 + j, tensors=tensors),
                step=int(rng.integers(0, 2**40)),
                partition=int(rng.integers(0, 64)),
                offset=int(rng.integers(0, 2**50)),
                mean=float(rng.standard_normal()),
                out_offsets=np.sort(rng.integers(0, 2**50, n)),
                out_steps=rng.integers(0, 2**40, n),
                out_forecasts=rng.standard_normal((n, horizon)) * 1e4,
                comp=rng.standard_normal(components) * 1e3,
            )
        )
    return out


def as_batch(recs: list[StateRecord], horizon: int) -> StateBatch:
    tensors = 1 + (len(recs[0].c) > 0)
    shape = (recs[0].layers, recs[0].hidden_size, horizon, tensors, len(recs[0].comp))
    b = StateBatch.empty(len(recs), *shape)
    for j, r in enumerate(recs):
        b.comp[j] = r.comp
        b.h[:, j], b.c[:, j] = r.h, r.c
        b.step[j], b.partition[j], b.offset[j], b.updated_ms[j] = (
            r.step,
            r.partition,
            r.offset,
            r.updated_ms,
        )
        b.count[j], b.mean[j], b.var[j] = r.count, r.mean, r.var
        b.version[j] = r.model_version.encode()
    b.set_outputs(
        np.concatenate([np.full(len(r.out_offsets), j) for j, r in enumerate(recs)]),
        np.concatenate([r.out_offsets for r in recs]),
        np.concatenate([r.out_steps for r in recs]),
        np.concatenate([r.out_forecasts for r in recs]).reshape(-1, horizon),
    )
    return b


def no_outputs() -> dict[str, np.ndarray]:
    return {
        "out_offsets": np.zeros(0, np.int64),
        "out_steps": np.zeros(0, np.int64),
        "out_forecasts": np.zeros((0, 0)),
    }


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("tensors", "components"), [(1, 0), (2, 0), (2, 6), (1, 26)])
def test_encode_many_writes_the_bytes_of_encode(
    dtype: str, seed: int, tensors: int, components: int
) -> None:
    recs = batch_records(dtype, 40, horizon=3, seed=seed, tensors=tensors, components=components)
    assert encode_many(as_batch(recs, 3), dtype) == [encode(r) for r in recs]  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(("tensors", "components"), [(1, 0), (2, 0), (2, 6)])
def test_decode_many_reads_what_decode_reads(dtype: str, tensors: int, components: int) -> None:
    recs = batch_records(dtype, 40, horizon=3, seed=7, tensors=tensors, components=components)
    raws: list[bytes | None] = [encode(r) for r in recs]
    raws[5] = None  # an entity without a state
    batch, problems = decode_many(
        raws,
        2,
        16,
        3,
        dtype,  # type: ignore[arg-type]
        tensors,
        components=components,
    )
    assert problems == {}
    for j, raw in enumerate(raws):
        if raw is None:
            assert batch.partition[j] == -1 and batch.offset[j] == -1 and batch.step[j] == 0
            assert not (batch.out_entity == j).any()
        else:
            assert encode(batch.record(j, dtype)) == raw  # type: ignore[arg-type]


def test_decode_many_reads_odd_records_one_by_one_and_reports_problems() -> None:
    recs = batch_records("float32", 6, horizon=3, seed=3)
    raws: list[bytes | None] = [encode(r) for r in recs]
    raws[0] = encode(record("float16", seed=50))  # another dtype: read, as float32 values
    raws[1] = as_format(encode(dataclasses.replace(recs[1], **no_outputs())), 1)
    raws[2] = encode(record(layers=3, seed=51))  # another shape: reset, fence kept
    raws[3] = b"STRM" + b"\x00" * 200  # undecodable, fence readable
    raws[4] = b"junk"  # undecodable, no fence
    batch, problems = decode_many(raws, 2, 16, 3)
    assert sorted(problems) == [2, 3, 4]
    assert "2x3x16" in problems[2] and "undecodable" in problems[3]
    np.testing.assert_array_equal(batch.h[:, 0], decode(raws[0]).h)
    assert batch.offset[1] == recs[1].offset and batch.step[1] == recs[1].step
    assert (batch.partition[2], batch.offset[2], batch.step[2]) == (3, 2**40 + 17, 0)
    assert not batch.h[:, 2].any()
    assert (batch.partition[4], batch.offset[4]) == (-1, -1)
    assert encode(batch.record(5)) == raws[5]


def test_a_state_of_another_cell_starts_over() -> None:
    lstm, gru = encode(record(seed=1)), encode(record(seed=2, tensors=1))
    batch, problems = decode_many([lstm, gru], 2, 16, 3, tensors=1)  # a GRU reads both
    assert list(problems) == [0] and "2x2x16" in problems[0]
    assert not batch.h[:, 0].any() and batch.offset[0] == 2**40 + 17  # fence kept
    assert batch.c.shape == (0, 2, 16)
    np.testing.assert_array_equal(batch.h[:, 1], decode(gru).h)


def test_components_round_trip_exactly_in_format_4_and_others_stay_format_3() -> None:
    comp = np.array([17.0, 2564.61060902703, -3.25, 1e-300, 7.5])
    rec = dataclasses.replace(record(), comp=comp, **no_outputs())
    raw = encode(rec)
    assert raw[4] == 4 and encode(record())[4] == 3
    assert len(raw) == len(encode(record())) + 2 + 8 * len(comp)
    back = decode(raw)
    np.testing.assert_array_equal(back.comp, comp)
    assert back.step == rec.step and back.offset == rec.offset
    np.testing.assert_array_equal(back.h, rec.h)
    with_out = dataclasses.replace(
        rec, out_offsets=np.array([5, 9]), out_steps=np.array([1, 2]), out_forecasts=np.ones((2, 3))
    )
    again = decode(encode(with_out))
    np.testing.assert_array_equal(again.comp, comp)
    np.testing.assert_array_equal(again.out_forecasts, np.ones((2, 3)))
    with pytest.raises(StateCodecError, match="bytes"):
        decode(raw[:-3])


def test_states_of_other_components_start_over_with_their_fence() -> None:
    seasonal = encode(dataclasses.replace(record(seed=1), comp=np.arange(6.0)))
    plain = encode(record(seed=2))
    other = encode(dataclasses.replace(record(seed=3), comp=np.arange(4.0)))
    batch, problems = decode_many([seasonal, plain, other], 2, 16, 3, components=6)
    assert sorted(problems) == [1, 2] and "0 level and seasonal" in problems[1]
    np.testing.assert_array_equal(batch.comp[0], np.arange(6.0))
    assert not batch.comp[1:].any() and not batch.h[:, 1:].any()
    assert batch.offset[1] == 2**40 + 17  # fence kept
    batch, problems = decode_many([seasonal, plain], 2, 16, 3)  # a model without components
    assert list(problems) == [0] and batch.comp.shape == (2, 0)


def test_decode_many_drops_kept_outputs_of_another_horizon() -> None:
    recs = batch_records("float32", 8, horizon=2, seed=4)
    batch, problems = decode_many([encode(r) for r in recs], 2, 16, 3)
    assert problems == {} and len(batch.out_entity) == 0
    np.testing.assert_array_equal(batch.h[:, 7], recs[7].h)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_rows_and_tails_join_into_the_records_and_give_their_bases(dtype: str) -> None:
    recs = batch_records(dtype, 30, horizon=3, seed=11)
    rows, tails = encode_rows(as_batch(recs, 3), dtype)  # type: ignore[arg-type]
    assert tails is not None and any(tails) and not all(tails)
    assert records(rows, tails) == [encode(r) for r in recs]
    assert bases(rows) == [base_of(encode(r)) for r in recs]
    bare = [dataclasses.replace(r, **no_outputs()) for r in recs]
    rows, tails = encode_rows(as_batch(bare, 3), dtype)  # type: ignore[arg-type]
    assert tails is None and records(rows) == [encode(r) for r in bare]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_many_reads_cached_rows_as_it_reads_their_bytes(dtype: str) -> None:
    recs = [dataclasses.replace(r, **no_outputs()) for r in batch_records(dtype, 20, 3, seed=5)]
    raws: list[bytes | None] = [encode(r) for r in recs]
    rows, _ = encode_rows(as_batch(recs, 3), dtype)  # type: ignore[arg-type]
    at = np.array([1, 4, 5, 17])
    mixed = [None if j in at else raw for j, raw in enumerate(raws)]
    want, _ = decode_many(raws, 2, 16, 3, dtype)  # type: ignore[arg-type]
    got, problems = decode_many(mixed, 2, 16, 3, dtype, 2, at, rows[at])  # type: ignore[arg-type]
    assert problems == {}
    for j in range(len(recs)):
        assert encode(got.record(j, dtype)) == encode(want.record(j, dtype))  # type: ignore[arg-type]
    # rows of another layout (a model of another shape swapped in) read as their bytes: reset
    other = [record("float32", layers=3, seed=60)]
    orows, _ = encode_rows(as_batch(other, 3), "float32")
    got, problems = decode_many([None, raws[1]], 2, 16, 3, dtype, 2, np.array([0]), orows)  # type: ignore[arg-type]
    assert list(problems) == [0] and "2x3x16" in problems[0]
    assert (got.partition[0], got.offset[0]) == (other[0].partition, other[0].offset)
