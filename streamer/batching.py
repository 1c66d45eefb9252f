"""Grouping a batch of events by entity, in waves.

A batch holds events of many entities, some of them several times. The cell steps each entity once
per call, so an entity seen k times in a batch is stepped in k waves: wave 0 holds the first event
of every entity, wave 1 the second event of the entities that have one, and so on. Within an entity
the order of the batch (its offset order: one entity lives in one partition) is kept.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["Plan", "plan_waves"]

I64 = npt.NDArray[np.int64]
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Plan(Generic[K]):
    #: The distinct entities, in order of first appearance.
    entities: list[K]
    #: For each event, the index of its entity in ``entities``, shape ``(N,)``.
    slot: I64
    #: For each wave, the indices of its events into the batch; no entity twice in one wave.
    waves: list[I64]


def plan_waves(keys: Sequence[K]) -> Plan[K]:
    """Group events by entity and split them into waves.

    >>> p = plan_waves(["a", "b", "a", "c", "a", "b"])
    >>> p.entities, p.slot.tolist(), [w.tolist() for w in p.waves]
    (['a', 'b', 'c'], [0, 1, 0, 2, 0, 1], [[0, 1, 3], [2, 5], [4]])
    """
    if len(set(keys)) == len(keys):  # every entity once: one wave, in batch order
        n = len(keys)
        return Plan(list(keys), np.arange(n, dtype=np.int64), [np.arange(n)] if n else [])
    index: dict[K, int] = {}
    seen: list[int] = []
    slot = np.empty(len(keys), dtype=np.int64)
    rank = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys):
        j = index.get(k)
        if j is None:
            j = index[k] = len(seen)
            seen.append(0)
        slot[i] = j
        rank[i] = seen[j]
        seen[j] += 1
    n_waves = max(seen, default=0)
    if n_waves <= 1:
        waves = [np.arange(len(keys), dtype=np.int64)] if len(keys) else []
    else:
        order = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[order], np.arange(1, n_waves))
        waves = [w.astype(np.int64) for w in np.split(order, bounds)]
    return Plan(list(index), slot, waves)
