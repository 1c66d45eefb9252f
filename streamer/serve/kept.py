"""Predictions kept for exact re-emission: where a batch puts them, and how a replay finds them.

No I/O here (the predictor reads the store). A store with an outbox gets a batch's predictions as
outbox parts (:func:`outbox_parts`); a store without one keeps them inside the records
(:func:`keep_in_records`). A replay's skipped events find theirs in the records
(:func:`from_records`) or in outbox entries (:func:`from_entries`), and :func:`join` makes one
table of them, each event once, in batch order.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from streamer.serve.columns import EventColumns
from streamer.serve.fence import group_ranks
from streamer.serve.outputs import Outputs
from streamer.serve.step import Served
from streamer.state.batch import StateBatch, outbox_dtype
from streamer.state.store import OutboxPart

__all__ = [
    "Kept",
    "floors",
    "from_entries",
    "from_records",
    "join",
    "keep_in_records",
    "outbox_parts",
]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Entries = npt.NDArray[np.void]


class Kept(NamedTuple):
    """Kept predictions found for some of a batch's events (``rows``)."""

    rows: I64
    step: I64
    values: F64
    version: list[str]
    window: I64


def floors(committed: Mapping[int, int], partitions: I64) -> I64:
    """Each partition's committed offset (-1: none): events below it were delivered."""
    return np.fromiter(
        (committed.get(p, -1) for p in partitions.tolist()), np.int64, len(partitions)
    )


def from_records(
    loaded: StateBatch, rows: I64, ent: I64, off: I64, k: int, window: bool
) -> tuple[npt.NDArray[np.bool_], Kept]:
    """The predictions the states keep for the events at ``rows`` (entity ``ent``, offset
    ``off``), and which events had one."""
    found = np.zeros(len(rows), bool)
    if not len(loaded.out_entity) or not len(rows):
        return found, _empty(k)
    span = (
        int(max(loaded.out_offset.max(), off.max())) + 2
    )  # the table is sorted by (entity, offset)
    table = loaded.out_entity * span + loaded.out_offset
    want = ent * span + off
    at = np.minimum(np.searchsorted(table, want), len(table) - 1)
    found = table[at] == want
    at = at[found]
    kept = loaded.out_forecast[at]
    return found, Kept(
        rows[found],
        loaded.out_step[at],
        kept[:, :k],
        [v.decode("ascii", errors="replace") for v in loaded.version[ent[found]]],
        kept[:, k].astype(np.int64) if window else np.zeros(len(at), np.int64),
    )


def from_entries(entries: Entries, rows: I64, off: I64, k: int, window: bool) -> Kept:
    """The outbox entries of the events at ``rows`` (offsets ``off``, all of one partition)."""
    if not len(entries) or not len(rows):
        return _empty(k)
    entries = entries[np.argsort(entries["offset"], kind="stable")]
    where = np.minimum(np.searchsorted(entries["offset"], off), len(entries) - 1)
    hit = entries["offset"][where] == off
    if not hit.any():  # (entries of other events only)
        return _empty(k)
    e = entries[where[hit]]
    values = e["values"].reshape(len(e), -1).astype(np.float64)
    return Kept(
        rows[hit],
        e["step"].astype(np.int64),
        values[:, :k],
        [v.rstrip(b"\0").decode("ascii", errors="replace") for v in e["version"].tolist()],
        values[:, k].astype(np.int64) if window else np.zeros(len(e), np.int64),
    )


def join(cols: EventColumns, parts: Sequence[Kept], k: int) -> Outputs:
    """One table of kept predictions, each event once (a rebalance can deliver an event twice
    in one batch), in batch order."""
    parts = [p for p in parts if len(p.rows)]
    if not parts:
        return Outputs.empty(k)
    rows = np.concatenate([p.rows for p in parts])
    ident = cols.partition[rows] * (int(cols.offset.max()) + 2) + cols.offset[rows]
    _, first = np.unique(ident, return_index=True)
    order = first[np.argsort(rows[first], kind="stable")]
    versions = [v for p in parts for v in p.version]
    return Outputs(
        rows[order],
        np.concatenate([p.step for p in parts])[order],
        np.concatenate([p.values for p in parts])[order],
        [versions[i] for i in order.tolist()],
        np.concatenate([p.window for p in parts])[order],
    )


def outbox_parts(
    fresh: Outputs,
    fresh_slot: I64,
    cols: EventColumns,
    sv: Served,
    committed: Mapping[int, int],
) -> tuple[list[OutboxPart], dict[int, Entries]]:
    """A batch's fresh predictions as outbox parts: per partition, the entries grouped by the
    record (item, ``fresh_slot``) they belong to, with the bounds of each record's bytes; and the
    entries per partition (what a replay in flight reads)."""
    parts: list[OutboxPart] = []
    held: dict[int, Entries] = {}
    if not len(fresh):
        return parts, held
    k = sv.spec.served_outputs
    rows = fresh.row
    part, off, key = cols.partition[rows], cols.offset[rows], fresh_slot
    dt = outbox_dtype(sv.kept_width)
    e = np.zeros(len(rows), dt)
    e["offset"], e["step"], e["version"] = off, fresh.step, sv.version.encode("ascii")
    e["values"][:, :k] = fresh.values
    if sv.spec.window:
        e["values"][:, k] = fresh.window
    order = np.lexsort((off, key, part))
    e, part, key, off = e[order], part[order], key[order], off[order]
    cuts = np.flatnonzero(np.r_[True, part[1:] != part[:-1], True])
    size = dt.itemsize
    for a, b in itertools.pairwise(cuts.tolist()):
        p = int(part[a])
        keys = key[a:b]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        lengths = np.diff(np.r_[starts, b - a])
        bounds = np.stack([keys[starts] + 1, starts * size, lengths * size], axis=1)
        parts.append(
            OutboxPart(
                p,
                int(off[a:b].max()),
                e[a:b].tobytes(),
                bounds.astype("<u4").tobytes(),
                committed.get(p, -1),
            )
        )
        held[p] = e[a:b]
    return parts, held


def keep_in_records(
    st: StateBatch,
    loaded: StateBatch,
    rows: I64,
    slot: I64,
    offsets: I64,
    steps: I64,
    forecasts: F64,
    committed: Mapping[int, int],
    cap: int,
) -> None:
    """For a store without an outbox: the outputs each saved state keeps (``st`` in place): the
    older ones not committed yet, then this batch's, the newest ``cap`` of them."""
    ent, off, stp, fc = slot, offsets, steps, forecasts
    if len(loaded.out_entity):
        where = np.full(len(loaded), -1, np.int64)
        where[rows] = np.arange(len(rows))
        owner = where[loaded.out_entity]  # the old outputs' entity in ``st``, -1 if not stepped
        part = loaded.partition[loaded.out_entity]
        old = (owner >= 0) & (part == st.partition[np.maximum(owner, 0)])
        old &= loaded.out_offset >= floors(committed, part)
        if old.any():
            ent = np.concatenate([owner[old], slot])
            off = np.concatenate([loaded.out_offset[old], offsets])
            stp = np.concatenate([loaded.out_step[old], steps])
            fc = np.concatenate([loaded.out_forecast[old], forecasts])
    st.set_outputs(ent, off, stp, fc)
    n = np.bincount(st.out_entity, minlength=len(st))
    if n.max(initial=0) > cap:
        e = st.out_entity
        keep = group_ranks(e) >= n[e] - cap
        st.out_entity, st.out_offset = e[keep], st.out_offset[keep]
        st.out_step, st.out_forecast = st.out_step[keep], st.out_forecast[keep]


def _empty(k: int) -> Kept:
    none = np.zeros(0, np.int64)
    return Kept(none, none, np.zeros((0, k)), [], none)
