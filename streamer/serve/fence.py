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
    entity appears twice (the common batch of many entities), which saves counting them.

    >>> f = fence(np.array([0, 0, 1, 0, 1]), np.array([2, 2, 3, 5, 3]), np.array([7, 8, 1, 9, 1]),
    ...           np.array([2, -1]), np.array([7, -1]))
    >>> f.applied.tolist(), f.skipped.tolist(), f.conflict.tolist()
    ([1, 2], [0, 4], [3])
    """
    n = len(entity)
    rows = np.arange(n, dtype=np.int64)
    if not n:
        return Fenced(rows, rows, rows)
    # An entity seen once in the batch: its stored fence alone decides (the usual case).
    sp, so = stored_partition[entity], stored_offset[entity]
    moved = (sp >= 0) & (partition != sp)
    applied = (sp != partition) | (offset > so)  # (a takeover applies an event that moved)
    state = np.where(applied, 1, 0).astype(np.int8)  # 0 skipped, 1 applied, 2 conflict
    if not takeover:
        state[moved] = 2
    if not distinct:
        # The few entities seen more than once: event by event, their home partition and their
        # running fence. (Sorting a batch by entity cost more than this loop over its repeats.)
        repeated = np.flatnonzero(np.bincount(entity, minlength=len(sp))[entity] > 1)
        if len(repeated):
            sub = _sequential(
                entity[repeated],
                partition[repeated],
                offset[repeated],
                stored_partition,
                stored_offset,
                takeover,
            )
            state[repeated] = 0
            state[repeated[sub.applied]] = 1
            state[repeated[sub.conflict]] = 2
    return Fenced(rows[state == 1], rows[state == 0], rows[state == 2])


def _sequential(
    entity: I64,
    partition: I64,
    offset: I64,
    stored_partition: I64,
    stored_offset: I64,
    takeover: bool = True,
) -> Fenced:
    """The rules event by event. ``takeover``: an event from another partition moves its
    entity's home there (its offsets start again); else it is a conflict and changes nothing."""
    last_part, last_off = stored_partition.tolist(), stored_offset.tolist()
    applied, skipped, conflict = [], [], []
    for i, (j, p, o) in enumerate(
        zip(entity.tolist(), partition.tolist(), offset.tolist(), strict=True)
    ):
        if not takeover and last_part[j] >= 0 and p != last_part[j]:
            conflict.append(i)
        elif p == last_part[j] and o <= last_off[j]:
            skipped.append(i)
        else:
            last_part[j], last_off[j] = p, o
            applied.append(i)
    return Fenced(
        np.asarray(applied, np.int64),
        np.asarray(skipped, np.int64),
        np.asarray(conflict, np.int64),
    )


@dataclass(frozen=True)
class Waves:
    #: the distinct entities stepped (indices into the batch's entities), ``(U,)``, in order of
    #: first appearance (with one wave: in batch order, and ``slot`` is ``0..U-1``)
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
    counts = np.bincount(entity) if n and not distinct else np.zeros(1, np.int64)
    if distinct or counts.max() <= 1:  # every entity once: one wave, in batch order
        return Waves(entity.astype(np.int64), every, [every] if n else [])
    # the rank of each event within its entity's: a loop over the repeated ones only
    rank = np.zeros(n, np.int64)
    repeated = np.flatnonzero(counts[entity] > 1)
    seen: dict[int, int] = {}
    for i, j in zip(repeated.tolist(), entity[repeated].tolist(), strict=True):
        r = seen.get(j, 0)
        rank[i] = r
        seen[j] = r + 1
    firsts = entity[rank == 0].astype(np.int64)  # the entities, in order of first appearance
    where = np.full(len(counts), -1, np.int64)
    where[firsts] = np.arange(len(firsts))
    return Waves(
        firsts, where[entity], [np.flatnonzero(rank == w) for w in range(int(rank.max()) + 1)]
    )
