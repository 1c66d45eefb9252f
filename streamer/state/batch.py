"""Whole batches of state records as columns, and the outbox's entries.

The predictor reads and writes hundreds of records per batch. Record by record, the codec
(:mod:`streamer.state.codec`) costs tens of microseconds each in Python; here a batch's fixed parts
(header, h and c, outputs count) are one numpy structured array, joined or split with one
``b"".join`` and one ``np.frombuffer``, and the variable part (kept outputs) is gathered or scattered
with index arithmetic. The bytes are those of :func:`~streamer.state.codec.encode` and
:func:`~streamer.state.codec.decode`, bit for bit (tests check it).

Stores that keep an outbox (one Redis, memory) keep the predictions of the events a batch applied
outside the states until the batch's offsets are committed: one blob per partition and batch, of
fixed-size entries in offset order (:func:`outbox_dtype`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.errors import StateCodecError
from streamer.state.codec import (
    _DTYPE_CODES,
    _VALUE_TYPES,
    BASE,
    COMPONENTS_FORMAT,
    FORMAT_VERSION,
    MAGIC,
    Dtype,
    StateRecord,
    _loaded,
    _stored,
    decode,
    read_fence,
)

__all__ = [
    "StateBatch",
    "bases",
    "decode_many",
    "decode_outbox",
    "encode_many",
    "encode_rows",
    "group_ranks",
    "outbox_dtype",
    "records",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def _row_dtype(
    code: int, layers: int, hidden: int, tensors: int, components: int = 0
) -> np.dtype[np.void]:
    """One record up to its kept outputs, as a numpy structured type (the layout above)."""
    comp = [("n_comp", "<u2"), ("comp", "<f8", (components,))] if components else []
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
            *comp,
            ("n_out", "<u4"),
            ("k", "<u2"),
        ]
    )


@dataclass
class StateBatch:
    """The states of U entities as columns, and the outputs they keep as one table.

    h and c are ``(L, U, H)`` float32 (c is ``(0, U, H)`` for states of one tensor), the level
    and seasonal components ``(U, E)`` float64 (E = 0 for a model without them), the other
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
    comp: F64

    @classmethod
    def empty(
        cls, u: int, layers: int, hidden: int, horizon: int, tensors: int = 2, components: int = 0
    ) -> StateBatch:
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
            comp=np.zeros((u, components)),
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
            comp=self.comp[rows],
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
            comp=self.comp[j].copy(),
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
    e = batch.comp.shape[1]
    rows = np.zeros(u, _row_dtype(code, layers, hidden, tensors, e))
    rows["magic"] = MAGIC
    rows["format"] = COMPONENTS_FORMAT if e else FORMAT_VERSION
    rows["dtype"] = code
    rows["layers"] = layers
    rows["tensors"] = tensors
    rows["hidden"] = hidden
    rows["version"] = batch.version
    for name in ("step", "partition", "offset", "updated_ms", "count", "mean", "var"):
        rows[name] = getattr(batch, name)
    hc = np.stack([batch.h, batch.c] if tensors == 2 else [batch.h]).transpose(2, 0, 1, 3)
    rows["hc"] = _stored(hc, code)
    if e:
        rows["n_comp"], rows["comp"] = e, batch.comp
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
    components: int = 0,
) -> tuple[StateBatch, dict[int, str]]:
    """The records of a batch as columns, for a model whose states are ``tensors`` tensors of
    ``layers`` x ``hidden`` with ``components`` level and seasonal components, and whose outputs
    have ``horizon`` values.

    Returns the batch and the problems, entity index -> why: a record that cannot be decoded, or
    whose shape differs, has zeros in the batch (it starts over) but keeps its fence,
    so nothing it applied is applied again. Records of another dtype or an older format are read
    one by one; kept outputs of another horizon are dropped.

    ``cached``: the fixed parts of records without kept outputs (a cache's, see
    :func:`encode_rows`) of the entities at ``cached_at``, whose ``raws`` are None.
    """
    batch = StateBatch.empty(len(raws), layers, hidden, horizon, tensors, components)
    code = _DTYPE_CODES[dtype]
    rdt = _row_dtype(code, layers, hidden, tensors, components)
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
            & (rows["format"] == (COMPONENTS_FORMAT if components else FORMAT_VERSION))
            & (rows["dtype"] == code)
            & (rows["layers"] == layers)
            & (rows["tensors"] == tensors)
            & (rows["hidden"] == hidden)
            & (sizes == width + n * (16 + 8 * k))
            & ((n == 0) | (k == horizon))
        )
        if components:
            fast &= rows["n_comp"] == components
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
        if len(rec.comp) != components:
            problems[i] = (
                f"stored with {len(rec.comp)} level and seasonal components, "
                f"the model's has {components}"
            )
            continue
        batch.h[:, i], batch.c[:, i] = rec.h, rec.c
        batch.step[i], batch.updated_ms[i] = rec.step, rec.updated_ms
        batch.count[i], batch.mean[i], batch.var[i] = rec.count, rec.mean, rec.var
        batch.comp[i] = rec.comp
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
    if batch.comp.shape[1]:
        batch.comp[at] = rows["comp"]


# ------------------------------------------------------------------------------- the outbox --


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
