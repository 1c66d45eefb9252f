"""The state record: its binary format and the one codec that reads and writes it.

One Redis value per (model name, entity) (:func:`streamer.state.store.state_key` names the keys)::

    offset  size  field
    0       4     magic b"STRM"
    4       1     format version (3; 2 had no S, 1 no kept outputs)
    5       1     dtype of h and c: 0 float32, 1 float16, 2 bfloat16
    6       1     layers L (rows of each state tensor)
    7       1     S: state tensors, 2 (h and c: LSTM) or 1 (h: GRU, RNN; a window's buffer)
    8       4     hidden size H (width of each state tensor)
    12      16    model version (ASCII, NUL padded)
    28      8     step count: events applied to this entity
    36      4     source partition of the last applied event   } the fence; these two fields keep
    40      8     source offset of the last applied event      } their place in every format version
    48      8     last update, Unix milliseconds
    56      8     scaling: count   (float64 fields: running statistics of y,
    64      8     scaling: mean     see streamer.scaling)
    72      8     scaling: var
    80      ...   h (L*H values of dtype), then c (L*H values) when S is 2
    then    4     n: outputs kept for re-emission (format 2)
            2     K: values per output (the horizon, or the classes)
            8n    their source offsets (int64)
            8n    their step counts (uint64)
            8nK   their forecasts (float64)

The kept outputs are the predictions of events this state already applied whose offsets may not be
committed yet: after a crash those events are consumed again, skipped by the fence, and their
predictions re-emitted from here, identical to the first time. Only stores without an outbox keep
them here (Redis Cluster); one Redis and the memory store keep them in an outbox (the end of this
module) and write records with ``n = 0``: header, h and c, and 6 bytes. Format 1 records (no
outputs) and format 2 records (the layers field was two bytes, S always 2) are still read.

Little-endian throughout. This module's functions (:func:`encode` and :func:`decode` for one record,
:func:`encode_many` and :func:`decode_many` for a batch) are the only code that touches the bytes;
the Lua script of :class:`streamer.state.redis.RedisStateStore` reads the fence and base fields at
the offsets named here (:data:`FENCE`, :data:`BASE`). Nothing outside :mod:`streamer.state` knows a
byte offset of the record.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streamer.errors import StateCodecError

__all__ = [
    "HEADER",
    "Dtype",
    "StateBatch",
    "StateRecord",
    "base_of",
    "bases",
    "decode",
    "decode_many",
    "encode",
    "encode_many",
    "encode_rows",
    "group_ranks",
    "read_fence",
    "records",
]

MAGIC = b"STRM"
FORMAT_VERSION = 3
_READABLE_FORMATS = (1, 2, 3)
_TAIL = struct.Struct("<IH")
HEADER = struct.Struct("<4sBBBBI16sQiqQddd")
assert HEADER.size == 80
#: Where the fence (source partition, offset of the last applied event) lies in every record.
FENCE = slice(36, 48)
#: What a store's compare-and-set knows a record by: its fence and its time of writing.
BASE = slice(36, 56)

Dtype = Literal["float32", "float16", "bfloat16"]
_DTYPE_CODES: dict[str, int] = {"float32": 0, "float16": 1, "bfloat16": 2}
_DTYPE_NAMES: dict[int, Dtype] = {0: "float32", 1: "float16", 2: "bfloat16"}
_DTYPE_BYTES = {0: 4, 1: 2, 2: 2}
_VALUE_TYPES = {0: "<f4", 1: "<f2", 2: "<u2"}

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class StateRecord:
    """The decoded state of one entity. h and c are float32 arrays of shape ``(L, H)``; c is
    ``(0, H)`` for a state of one tensor (S = 1)."""

    h: F32
    c: F32
    model_version: str
    step: int
    partition: int
    offset: int
    updated_ms: int
    count: float
    mean: float
    var: float
    dtype: Dtype = "float32"
    #: Outputs kept for re-emission: source offsets ``(n,)``, steps ``(n,)``, forecasts ``(n, K)``.
    out_offsets: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    out_steps: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    out_forecasts: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def layers(self) -> int:
        return int(self.h.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.h.shape[1])


def _bf16_bits(a: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """bfloat16 as the upper half of float32, rounded to nearest even."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def _from_bf16_bits(bits: npt.NDArray[np.uint16]) -> F32:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _stored(a: F32, code: int) -> npt.NDArray[np.generic]:
    """float32 values as stored for a dtype code."""
    if code == 0:
        return np.asarray(a, "<f4")
    if code == 1:
        return np.asarray(a, "<f4").astype("<f2")
    return _bf16_bits(a)


def _loaded(a: npt.NDArray[np.generic], code: int) -> F32:
    """Stored values back as float32."""
    if code == 2:
        return _from_bf16_bits(a.astype(np.uint16))
    return a.astype(np.float32)


def _to_bytes(a: F32, dtype: int) -> bytes:
    return _stored(a, dtype).tobytes()


def _from_bytes(buf: bytes, offset: int, n: int, dtype: int) -> F32:
    return _loaded(np.frombuffer(buf, _VALUE_TYPES[dtype], n, offset), dtype)


def encode(rec: StateRecord) -> bytes:
    """The bytes of a state record."""
    code = _DTYPE_CODES[rec.dtype]
    layers, hidden = rec.h.shape
    if not 0 < layers < 256:
        raise StateCodecError(f"a state has 1 to 255 layers, not {layers}")
    version = rec.model_version.encode("ascii")
    if len(version) > 16:
        raise StateCodecError(f"model version {rec.model_version!r} is longer than 16 bytes")
    head = HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        code,
        layers,
        2 if len(rec.c) else 1,
        hidden,
        version,
        rec.step,
        rec.partition,
        rec.offset,
        rec.updated_ms,
        rec.count,
        rec.mean,
        rec.var,
    )
    n = len(rec.out_offsets)
    k = rec.out_forecasts.shape[1] if n else 0
    tail = (
        _TAIL.pack(n, k)
        + np.asarray(rec.out_offsets, "<i8").tobytes()
        + np.asarray(rec.out_steps, "<u8").tobytes()
        + np.asarray(rec.out_forecasts, "<f8").reshape(n, k).tobytes()
    )
    return head + _to_bytes(rec.h, code) + _to_bytes(rec.c, code) + tail


def decode(buf: bytes) -> StateRecord:
    """A state record from its bytes; :class:`StateCodecError` if they are not one."""
    if len(buf) < HEADER.size:
        raise StateCodecError(f"state record of {len(buf)} bytes is shorter than its header")
    (
        magic,
        fmt,
        code,
        layers,
        tensors,
        hidden,
        version,
        step,
        partition,
        offset,
        updated,
        count,
        mean,
        var,
    ) = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise StateCodecError(f"not a streamer state record (magic {magic!r})")
    if fmt not in _READABLE_FORMATS:
        raise StateCodecError(
            f"state format version {fmt} is not supported (this reads {FORMAT_VERSION})"
        )
    if code not in _DTYPE_NAMES:
        raise StateCodecError(f"unknown state dtype code {code}")
    if fmt < 3:  # the layers field was two bytes wide; states were h and c
        layers, tensors = layers + 256 * tensors, 2
    if tensors not in (1, 2):
        raise StateCodecError(f"a state has 1 or 2 tensors, not {tensors}")
    n = layers * hidden
    body_end = HEADER.size + tensors * n * _DTYPE_BYTES[code]
    out_offsets = np.zeros(0, np.int64)
    out_steps = np.zeros(0, np.int64)
    out_forecasts = np.zeros((0, 0))
    if fmt == 1:
        expected = body_end
    elif len(buf) < body_end + _TAIL.size:
        expected = body_end + _TAIL.size
    else:
        n_out, k = _TAIL.unpack_from(buf, body_end)
        at = body_end + _TAIL.size
        expected = at + n_out * (16 + 8 * k)
        if len(buf) == expected:
            out_offsets = np.frombuffer(buf, "<i8", n_out, at).astype(np.int64)
            out_steps = np.frombuffer(buf, "<u8", n_out, at + 8 * n_out).astype(np.int64)
            out_forecasts = (
                np.frombuffer(buf, "<f8", n_out * k, at + 16 * n_out)
                .astype(np.float64)
                .reshape(n_out, k)
            )
    if len(buf) != expected:
        raise StateCodecError(f"state record is {len(buf)} bytes, its header says {expected}")
    h = _from_bytes(buf, HEADER.size, n, code).reshape(layers, hidden)
    c = _from_bytes(buf, HEADER.size + n * _DTYPE_BYTES[code], n * (tensors - 1), code).reshape(
        layers * (tensors - 1), hidden
    )
    return StateRecord(
        h=h,
        c=c,
        model_version=version.rstrip(b"\0").decode("ascii", errors="replace"),
        step=step,
        partition=partition,
        offset=offset,
        updated_ms=updated,
        count=count,
        mean=mean,
        var=var,
        dtype=_DTYPE_NAMES[code],
        out_offsets=out_offsets,
        out_steps=out_steps,
        out_forecasts=out_forecasts,
    )


def base_of(record: bytes | None) -> bytes:
    """What the store's compare-and-set knows a record by: its fence and time of writing (the
    header's :data:`BASE` bytes), ``b""`` for no record.

    >>> base_of(None), len(base_of(bytes(80)))
    (b'', 20)
    """
    return b"" if record is None else record[BASE]


def read_fence(buf: bytes) -> tuple[int, int] | None:
    """``(partition, offset)`` of a record's fence, read as the Lua script reads it: also from a
    record whose body cannot be decoded, so the predictor and the store agree on what was applied.
    """
    if len(buf) < FENCE.stop or buf[:4] != MAGIC:
        return None
    partition, offset = struct.unpack_from("<iq", buf, FENCE.start)
    return int(partition), int(offset)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ------------------------------------------------------------------------------ whole batches --
#
# The predictor reads and writes hundreds of records per batch. Record by record, the codec costs
# tens of microseconds each in Python; here a batch's fixed parts (header, h and c, outputs count)
# are one numpy structured array, joined or split with one ``b"".join`` and one ``np.frombuffer``,
# and the variable part (kept outputs) is gathered or scattered with index arithmetic. The bytes are
# those of :func:`encode` and :func:`decode`, bit for bit (tests check it).


def _row_dtype(code: int, layers: int, hidden: int, tensors: int) -> np.dtype[np.void]:
    """One record up to its kept outputs, as a numpy structured type (the layout above)."""
    return np.dtype(
        [
            ("magic", "S4"),
            ("format", "u1"),
            ("dtype", "u1"),
            ("layers", "u1"),
            ("tensors", "u1"),
            ("hidden", "<u4"),
            ("version", "S16"),
            ("step", "<u8"),
            ("partition", "<i4"),
            ("offset", "<i8"),
            ("updated_ms", "<u8"),
            ("count", "<f8"),
            ("mean", "<f8"),
            ("var", "<f8"),
            ("hc", _VALUE_TYPES[code], (tensors, layers, hidden)),
            ("n_out", "<u4"),
            ("k", "<u2"),
        ]
    )


@dataclass
class StateBatch:
    """The states of U entities as columns, and the outputs they keep as one table.

    h and c are ``(L, U, H)`` float32 (c is ``(0, U, H)`` for states of one tensor), the other
    entity fields ``(U,)``. The kept outputs of all
    entities are M rows ordered by entity (``out_entity`` never decreases), each entity's rows in
    offset order: ``out_offset``, ``out_step`` ``(M,)`` and ``out_forecast`` ``(M, K)``.
    An entity without a stored state has zeros and the fence ``(-1, -1)``.
    """

    h: F32
    c: F32
    step: I64
    partition: I64
    offset: I64
    updated_ms: I64
    count: F64
    mean: F64
    var: F64
    #: model version of each state's last writer, ASCII
    version: npt.NDArray[np.bytes_]
    out_entity: I64
    out_offset: I64
    out_step: I64
    out_forecast: F64

    @classmethod
    def empty(cls, u: int, layers: int, hidden: int, horizon: int, tensors: int = 2) -> StateBatch:
        return cls(
            h=np.zeros((layers, u, hidden), np.float32),
            c=np.zeros((layers * (tensors - 1), u, hidden), np.float32),
            step=np.zeros(u, np.int64),
            partition=np.full(u, -1, np.int64),
            offset=np.full(u, -1, np.int64),
            updated_ms=np.zeros(u, np.int64),
            count=np.zeros(u),
            mean=np.zeros(u),
            var=np.zeros(u),
            version=np.zeros(u, "S16"),
            out_entity=np.zeros(0, np.int64),
            out_offset=np.zeros(0, np.int64),
            out_step=np.zeros(0, np.int64),
            out_forecast=np.zeros((0, horizon)),
        )

    def __len__(self) -> int:
        return len(self.step)

    def take(self, rows: I64) -> StateBatch:
        """The states of entities ``rows``, as a new batch without outputs."""
        return StateBatch(
            h=np.ascontiguousarray(self.h[:, rows]),
            c=np.ascontiguousarray(self.c[:, rows]),
            step=self.step[rows],
            partition=self.partition[rows],
            offset=self.offset[rows],
            updated_ms=self.updated_ms[rows],
            count=self.count[rows],
            mean=self.mean[rows],
            var=self.var[rows],
            version=self.version[rows],
            out_entity=np.zeros(0, np.int64),
            out_offset=np.zeros(0, np.int64),
            out_step=np.zeros(0, np.int64),
            out_forecast=np.zeros((0, self.out_forecast.shape[1])),
        )

    def set_outputs(self, entity: I64, offset: I64, step: I64, forecast: F64) -> None:
        """Replace the outputs table; rows are put in entity order, keeping their order within."""
        order = np.argsort(entity, kind="stable")
        self.out_entity = entity[order]
        self.out_offset = offset[order]
        self.out_step = step[order]
        self.out_forecast = forecast[order]

    def record(self, j: int, dtype: Dtype = "float32") -> StateRecord:
        """Entity ``j`` as a :class:`StateRecord`."""
        rows = np.flatnonzero(self.out_entity == j)
        return StateRecord(
            h=self.h[:, j].copy(),
            c=self.c[:, j].copy(),
            model_version=self.version[j].decode("ascii", errors="replace"),
            step=int(self.step[j]),
            partition=int(self.partition[j]),
            offset=int(self.offset[j]),
            updated_ms=int(self.updated_ms[j]),
            count=float(self.count[j]),
            mean=float(self.mean[j]),
            var=float(self.var[j]),
            dtype=dtype,
            out_offsets=self.out_offset[rows],
            out_steps=self.out_step[rows],
            out_forecasts=self.out_forecast[rows],
        )


def group_ranks(groups: I64) -> I64:
    """Position of each row within its run of equal values (``groups`` sorted).

    >>> group_ranks(np.array([0, 0, 2, 2, 2, 5])).tolist()
    [0, 1, 0, 1, 2, 0]
    """
    return np.arange(len(groups)) - np.searchsorted(groups, groups)


def encode_rows(
    batch: StateBatch, dtype: Dtype = "float32"
) -> tuple[npt.NDArray[np.void], list[bytes] | None]:
    """Each entity's record as a fixed part (one row of a numpy structured array: header, h, c
    and the outputs count) and the bytes after it (its kept outputs; None when no entity keeps
    any). :func:`records` joins them into what :func:`encode` writes."""
    code = _DTYPE_CODES[dtype]
    layers, u, hidden = batch.h.shape
    tensors = 2 if len(batch.c) else 1
    rows = np.zeros(u, _row_dtype(code, layers, hidden, tensors))
    rows["magic"] = MAGIC
    rows["format"] = FORMAT_VERSION
    rows["dtype"] = code
    rows["layers"] = layers
    rows["tensors"] = tensors
    rows["hidden"] = hidden
    rows["version"] = batch.version
    for name in ("step", "partition", "offset", "updated_ms", "count", "mean", "var"):
        rows[name] = getattr(batch, name)
    hc = np.stack([batch.h, batch.c] if tensors == 2 else [batch.h]).transpose(2, 0, 1, 3)
    rows["hc"] = _stored(hc, code)
    e = batch.out_entity
    n = np.bincount(e, minlength=u)
    k = batch.out_forecast.shape[1]
    rows["n_out"] = n
    rows["k"] = np.where(n > 0, k, 0)
    if not len(e):
        return rows, None

    # Each entity's tail: its offsets, then its steps, then its forecasts.
    size = n * (16 + 8 * k)
    ends = np.cumsum(size)
    base = (ends - size)[e]
    r, ne = group_ranks(e), n[e]
    tail = np.empty(int(ends[-1]), np.uint8)
    eight = np.arange(8)
    tail[(base + 8 * r)[:, None] + eight] = (
        batch.out_offset.astype("<i8").view(np.uint8).reshape(-1, 8)
    )
    tail[(base + 8 * ne + 8 * r)[:, None] + eight] = (
        batch.out_step.astype("<u8").view(np.uint8).reshape(-1, 8)
    )
    fc = np.ascontiguousarray(batch.out_forecast, "<f8").view(np.uint8).reshape(-1, 8 * k)
    tail[(base + 16 * ne + 8 * k * r)[:, None] + np.arange(8 * k)] = fc
    tails = tail.tobytes()
    bounds = np.concatenate([[0], ends]).tolist()
    return rows, [tails[t0:t1] for t0, t1 in itertools.pairwise(bounds)]


def records(rows: npt.NDArray[np.void], tails: Sequence[bytes] | None = None) -> list[bytes]:
    """The bytes of each record: its fixed part, then its tail."""
    fixed, width = rows.tobytes(), rows.dtype.itemsize
    starts = range(0, len(rows) * width, width)
    if tails is None:
        return [fixed[a : a + width] for a in starts]
    return [fixed[a : a + width] + t for a, t in zip(starts, tails, strict=True)]


def bases(rows: npt.NDArray[np.void]) -> list[bytes]:
    """:func:`base_of` of each record, from the fixed parts."""
    width = rows.dtype.itemsize
    cut = np.ascontiguousarray(rows).view(np.uint8).reshape(-1, width)[:, BASE].tobytes()
    size = BASE.stop - BASE.start
    return [cut[a : a + size] for a in range(0, len(cut), size)]


def encode_many(batch: StateBatch, dtype: Dtype = "float32") -> list[bytes]:
    """The bytes of each entity's record, as :func:`encode` writes them."""
    return records(*encode_rows(batch, dtype))


def decode_many(
    raws: Sequence[bytes | None],
    layers: int,
    hidden: int,
    horizon: int,
    dtype: Dtype = "float32",
    tensors: int = 2,
    cached_at: I64 | None = None,
    cached: npt.NDArray[np.void] | None = None,
) -> tuple[StateBatch, dict[int, str]]:
    """The records of a batch as columns, for a model whose states are ``tensors`` tensors of
    ``layers`` x ``hidden`` and whose outputs have ``horizon`` values.

    Returns the batch and the problems, entity index -> why: a record that cannot be decoded, or
    whose shape differs, has zeros in the batch (it starts over) but keeps its fence,
    so nothing it applied is applied again. Records of another dtype or an older format are read
    one by one; kept outputs of another horizon are dropped.

    ``cached``: the fixed parts of records without kept outputs (a cache's, see
    :func:`encode_rows`) of the entities at ``cached_at``, whose ``raws`` are None.
    """
    batch = StateBatch.empty(len(raws), layers, hidden, horizon, tensors)
    code = _DTYPE_CODES[dtype]
    rdt = _row_dtype(code, layers, hidden, tensors)
    width = rdt.itemsize
    if cached is not None and cached_at is not None and cached.dtype != rdt:  # (another layout)
        raws = list(raws)
        for j, raw in zip(cached_at.tolist(), records(cached), strict=True):
            raws[j] = raw
        cached = None
    at = [i for i, raw in enumerate(raws) if raw is not None and len(raw) >= width]
    got: list[bytes] = [raws[i] for i in at]  # type: ignore[misc]
    fast = np.zeros(len(at), bool)
    out_parts: list[tuple[I64, I64, I64, F64]] = []
    if at:
        sizes = np.fromiter(map(len, got), np.int64, len(got))
        if (sizes == width).all():  # no kept outputs: the records are the rows
            rows = np.frombuffer(b"".join(got), rdt)
        else:
            rows = np.frombuffer(b"".join([raw[:width] for raw in got]), rdt)
        n = rows["n_out"].astype(np.int64)
        k = rows["k"].astype(np.int64)
        fast = (
            (rows["magic"] == MAGIC)
            & (rows["format"] == FORMAT_VERSION)
            & (rows["dtype"] == code)
            & (rows["layers"] == layers)
            & (rows["tensors"] == tensors)
            & (rows["hidden"] == hidden)
            & (sizes == width + n * (16 + 8 * k))
            & ((n == 0) | (k == horizon))
        )
        everyone = len(at) == len(raws) and bool(fast.all())
        idx = np.asarray(at, np.int64)[fast]
        good = rows if everyone else rows[fast]
        at_idx: Any = slice(None) if everyone else idx  # a slice writes without an index array
        _fill(batch, at_idx, good, code, tensors)
        has = n[fast] > 0
        if has.any():
            holders = idx[has]
            counts = n[fast][has]
            held = np.flatnonzero(fast)[has].tolist()  # their places in ``got``
            tails = np.frombuffer(b"".join(got[g][width:] for g in held), np.uint8)
            size = counts * (16 + 8 * horizon)
            e = np.repeat(np.arange(len(holders)), counts)
            base = (np.cumsum(size) - size)[e]
            r, ne = group_ranks(e), counts[e]
            eight = np.arange(8)
            out_parts.append(
                (
                    holders[e],
                    tails[(base + 8 * r)[:, None] + eight].view("<i8").ravel().astype(np.int64),
                    tails[(base + 8 * ne + 8 * r)[:, None] + eight]
                    .view("<u8")
                    .ravel()
                    .astype(np.int64),
                    tails[(base + 16 * ne + 8 * horizon * r)[:, None] + np.arange(8 * horizon)]
                    .view("<f8")
                    .astype(np.float64),
                )
            )

    if cached is not None and cached_at is not None and len(cached_at):
        _fill(batch, cached_at, cached, code, tensors)
    problems: dict[int, str] = {}
    done = np.zeros(len(raws), bool)
    done[np.asarray(at, np.int64)[fast]] = True
    slow = np.flatnonzero(~done).tolist()
    for i in slow:
        raw = raws[i]
        if raw is None:
            continue
        try:
            rec = decode(raw)
        except StateCodecError as exc:
            problems[i] = f"undecodable: {exc}"
            fence = read_fence(raw)  # the store still refuses writes at or below it
            if fence is not None:
                batch.partition[i], batch.offset[i] = fence
            continue
        batch.partition[i], batch.offset[i] = rec.partition, rec.offset
        batch.version[i] = rec.model_version.encode("ascii", errors="replace")[:16]
        if len(rec.out_offsets) and rec.out_forecasts.shape[1] == horizon:
            m = len(rec.out_offsets)
            out_parts.append((np.full(m, i), rec.out_offsets, rec.out_steps, rec.out_forecasts))
        stored = (1 + (len(rec.c) > 0), rec.layers, rec.hidden_size)
        if stored != (tensors, layers, hidden):
            problems[i] = (
                f"stored as {'x'.join(map(str, stored))} (tensors x layers x hidden), "
                f"the model's is {tensors}x{layers}x{hidden}"
            )
            continue
        batch.h[:, i], batch.c[:, i] = rec.h, rec.c
        batch.step[i], batch.updated_ms[i] = rec.step, rec.updated_ms
        batch.count[i], batch.mean[i], batch.var[i] = rec.count, rec.mean, rec.var
    if out_parts:
        batch.set_outputs(
            np.concatenate([p[0] for p in out_parts]),
            np.concatenate([p[1] for p in out_parts]),
            np.concatenate([p[2] for p in out_parts]),
            np.concatenate([p[3] for p in out_parts]).reshape(-1, horizon),
        )
    return batch, problems


def _fill(batch: StateBatch, at: Any, rows: npt.NDArray[np.void], code: int, tensors: int) -> None:
    """Put the fixed parts ``rows`` at the batch's entities ``at`` (an index array or a slice)."""
    # (U', 2, L, H); float32 records are read in place (copied once, into the batch)
    hc = rows["hc"] if code == 0 and np.little_endian else _loaded(rows["hc"], code)
    batch.h[:, at] = hc[:, 0].transpose(1, 0, 2)
    if tensors == 2:
        batch.c[:, at] = hc[:, 1].transpose(1, 0, 2)
    for name in ("step", "partition", "offset", "updated_ms", "count", "mean", "var"):
        getattr(batch, name)[at] = rows[name]
    batch.version[at] = rows["version"]


# ------------------------------------------------------------------------------- the outbox --
#
# Stores that keep an outbox (one Redis, memory) keep the predictions of the events a batch
# applied outside the states, until the batch's offsets are committed: one blob per partition and
# batch, of fixed-size entries in offset order. A state at rest then holds only what the model
# needs; a replay after a crash re-emits from the outbox.


def outbox_dtype(width: int) -> np.dtype[np.void]:
    """One kept prediction: its event's offset, the entity's step, the model version that made
    it, and ``width`` values (the prediction's, then a window model's window length)."""
    return np.dtype(
        [("offset", "<i8"), ("step", "<i8"), ("version", "S16"), ("values", "<f8", (width,))]
    )


def decode_outbox(blobs: Sequence[bytes], width: int) -> npt.NDArray[np.void]:
    """The entries of outbox blobs, in offset order (blobs of another width are passed over: a
    model of another horizon cannot re-emit them)."""
    dt = outbox_dtype(width)
    good = [b for b in blobs if len(b) % dt.itemsize == 0]
    if not good:
        return np.zeros(0, dt)
    entries = np.frombuffer(b"".join(good), dt)
    return entries[np.argsort(entries["offset"], kind="stable")]
