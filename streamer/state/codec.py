"""The state record: its binary format and the one codec that reads and writes it.

One Redis value per (model name, entity) (:func:`streamer.state.store.state_key` names the keys)::

    offset  size  field
    0       4     magic b"STRM"
    4       1     format version (3, or 4 with components; 2 had no S, 1 no kept outputs)
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
    then    2     E: components (format 4 only: a model with seasonal components)
            8E    the entity's level and seasonal components (float64, see streamer.seasonal)
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

Little-endian throughout. This module (:func:`encode` and :func:`decode` for one record) and
:mod:`streamer.state.batch` (a batch as columns) are the only code that touches the bytes;
the Lua script of :class:`streamer.state.redis.RedisStateStore` reads the fence and base fields at
the offsets named here (:data:`FENCE`, :data:`BASE`). Nothing outside :mod:`streamer.state` knows a
byte offset of the record.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from streamer.errors import StateCodecError

__all__ = [
    "HEADER",
    "Dtype",
    "StateRecord",
    "base_of",
    "decode",
    "encode",
    "read_fence",
]

MAGIC = b"STRM"
FORMAT_VERSION = 3
#: The format of records with components (records without them stay format 3, byte for byte).
COMPONENTS_FORMAT = 4
_READABLE_FORMATS = (1, 2, 3, 4)
_TAIL = struct.Struct("<IH")
_COMP = struct.Struct("<H")
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
    #: Level and seasonal components ``(E,)`` (:mod:`streamer.seasonal`); empty for none.
    comp: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

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
    e = len(rec.comp)
    if e > 0xFFFF:
        raise StateCodecError(f"a state has at most 65,535 components, not {e}")
    head = HEADER.pack(
        MAGIC,
        COMPONENTS_FORMAT if e else FORMAT_VERSION,
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
    comp = _COMP.pack(e) + np.asarray(rec.comp, "<f8").tobytes() if e else b""
    return head + _to_bytes(rec.h, code) + _to_bytes(rec.c, code) + comp + tail


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
    comp = np.zeros(0)
    if fmt == 4 and len(buf) >= body_end + _COMP.size:
        (e,) = _COMP.unpack_from(buf, body_end)
        if len(buf) >= body_end + _COMP.size + 8 * e:
            comp = np.frombuffer(buf, "<f8", e, body_end + _COMP.size).astype(np.float64)
        body_end += _COMP.size + 8 * e
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
        comp=comp,
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
