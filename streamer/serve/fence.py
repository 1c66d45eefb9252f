"""The offset fence, the partition policy and the waves of one batch, as array operations.

All events of an entity belong to one partition, its *home*: the partition of its stored state's
last event, or for an entity without a state, the partition of its first event in the batch. An
event is applied when its offset is above every offset of its home partition that the entity
already applied (the stored fence, and the events before it in this batch); otherwise it is a
replay and skipped. An event from another partition is a *conflict*: producers that disagree on
the partitioner (librdkafka and kcat hash keys with CRC32, Java clients and streamer with murmur2)
put one entity's events on two partitions, whose offsets cannot be ordered against each other.
Conflicts are refused (the worker dead-letters them, reason ``partition_conflict``) unless a
*takeover* is asked for (``on_partition_change="takeover"``, after recreating or repartitioning a
topic): then an event from another partition moves the entity's home there, in batch order.

An entity applied k times in a batch is stepped in k waves: wave w holds the w-th applied event of
every entity that has one (:func:`waves`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Fenced", "Waves", "fence", "group_ranks", "waves"]

I64 = npt.NDArray[np.int64]


def group_ranks(groups: I64) -> I64:
    """Position of each row within its run of equal values (``groups`` sorted).

    >>> group_ranks(np.array([0, 0, 2, 2, 2, 5])).tolist()
    [0, 1, 0, 1, 2, 0]
    """
    return np.arange(len(groups)) - np.searchsorted(groups, groups)


@dataclass(frozen=True)
class Fenced:
    """The rows of a batch's events, each in batch order, by what becomes of them."""

    applied: I64
    skipped: I64
    conflict: I64


def fence(
    entity: I64,
    partition: I64,
    offset: I64,
    stored_partition: I64,
    stored_offset: I64,
    takeover: bool = False,
    distinct: bool = False,
) -> Fenced:
    """Sort a batch's events into applied, skipped and conflicting ones.

    ``entity`` indexes ``stored_partition`` and ``stored_offset``, the fence of each entity's
    stored state (``-1`` for an entity without one). ``distinct``: the caller knows that no
    entity appears twice (the common batch of many entities), which saves the sorting.

    >>> f = fence(np.array([0, 0, 1, 0, 1]), np.array([2, 2, 3, 5, 3]), np.array([7, 8, 1, 9, 1]),
    ...           np.array([2, -1]), np.array([7, -1]))
    >>> f.applied.tolist(), f.skipped.tolist(), f.conflict.tolist()
    ([1, 2], [0, 4], [3])
    """
    n = len(entity)
    rows = np.arange(n, dtype=np.int64)
    if not n:
        return Fenced(rows, rows, rows)
    if distinct:  # every entity once: no earlier event of its own in the batch
        sp, so = stored_partition[entity], stored_offset[entity]
        other = (sp >= 0) & (partition != sp)
        if takeover and other.any():
            return _sequential(entity, partition, offset, stored_partition, stored_offset)
        applied = ~other & ((sp != partition) | (offset > so))
        return Fenced(rows[applied], rows[~other & ~applied], rows[other])
    order = np.argsort(entity, kind="stable")  # grouped by entity, batch order within
    ent = entity[order]
    first = np.r_[True, ent[1:] != ent[:-1]]
    # The home partition: the stored state's, else the entity's first event's in this batch.
    first_part = partition[order][np.flatnonzero(first)][np.cumsum(first) - 1]
    home = np.where(stored_partition[ent] >= 0, stored_partition[ent], first_part)
    other = partition[order] != home
    if takeover and other.any():
        return _sequential(entity, partition, offset, stored_partition, stored_offset)
    # Highest offset applied before each event: its entity's stored one (same partition only),
    # or an earlier event's of this batch (a running maximum within each entity's run).
    off = np.where(other, -1, offset[order])
    ranks = np.unique(off, return_inverse=True)[1].reshape(-1).astype(np.int64)
    group = np.cumsum(first) - 1
    running = np.maximum.accumulate(group * (n + 1) + ranks) - group * (n + 1)
    before = np.r_[-1, running[:-1]]
    before[first] = -1
    sorted_off = np.unique(off)
    earlier = np.where(before >= 0, sorted_off[np.maximum(before, 0)], -1)
    stored = np.where(stored_partition[ent] == home, stored_offset[ent], -1)
    applied = ~other & (offset[order] > np.maximum(stored, earlier))
    out = np.empty(n, np.int8)  # 0 skipped, 1 applied, 2 conflict
    out[order] = np.where(other, 2, applied.astype(np.int8))
    return Fenced(rows[out == 1], rows[out == 0], rows[out == 2])


def _sequential(
    entity: I64, partition: I64, offset: I64, stored_partition: I64, stored_offset: I64
) -> Fenced:
    """The takeover policy, event by event: an event from another partition moves its entity's
    home there (its offsets start again)."""
    last_part, last_off = stored_partition.tolist(), stored_offset.tolist()
    applied, skipped = [], []
    for i, (j, p, o) in enumerate(
        zip(entity.tolist(), partition.tolist(), offset.tolist(), strict=True)
    ):
        if p == last_part[j] and o <= last_off[j]:
            skipped.append(i)
        else:
            last_part[j], last_off[j] = p, o
            applied.append(i)
    return Fenced(
        np.asarray(applied, np.int64), np.asarray(skipped, np.int64), np.zeros(0, np.int64)
    )


@dataclass(frozen=True)
class Waves:
    #: the distinct entities stepped (indices into the batch's entities), ``(U,)``; in batch
    #: order when there is one wave (then ``slot`` is ``0..U-1``)
    entities: I64
    #: for each applied event, its entity's position in ``entities``, ``(A,)``
    slot: I64
    #: for each wave, the positions of its events among the applied ones; no entity twice
    waves: list[I64]


def waves(entity: I64, distinct: bool = False) -> Waves:
    """Group applied events (their entities, in batch order) into waves.

    >>> w = waves(np.array([4, 7, 4, 9, 4, 7]))
    >>> w.entities.tolist(), w.slot.tolist(), [x.tolist() for x in w.waves]
    ([4, 7, 9], [0, 1, 0, 2, 0, 1], [[0, 1, 3], [2, 5], [4]])
    """
    n = len(entity)
    every = np.arange(n, dtype=np.int64)
    if distinct:  # known: every entity once: one wave, the entities in batch order
        return Waves(entity.astype(np.int64), every, [every] if n else [])
    uniq, slot = np.unique(entity, return_inverse=True)
    slot = slot.reshape(-1).astype(np.int64)
    if len(uniq) == n:  # every entity once: one wave, the entities in batch order
        return Waves(entity.astype(np.int64), every, [every] if n else [])
    order = np.argsort(slot, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = group_ranks(slot[order])
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(1, int(rank.max()) + 1))
    return Waves(
        uniq.astype(np.int64), slot, [w.astype(np.int64) for w in np.split(by_rank, bounds)]
    )
