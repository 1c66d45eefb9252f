"""An in-memory cache of the states a worker is processing, held as preallocated slots.

Optional (``cache_max_mb``): it saves the ``MGET`` of entities seen recently, which is most of them
when a worker owns a partition's entities and sees them again and again, and the decoding of their
records. It never changes what the worker computes:

- writes still go to Redis with the compare-and-set every batch (write-through), and a record enters
  the cache only once Redis took it, so the cache holds what Redis holds;
- the compare-and-set refuses a write stepped from a record Redis no longer holds (another worker
  wrote a newer state, ``streamer state reset`` or ``delete`` changed it, it expired, Redis lost
  it); a refused write evicts the entity, whose events are stepped again from what Redis holds;
- the entries of a partition are dropped when the partition is revoked, since another worker may
  step its entities before it comes back;
- an entry older than the state TTL is a miss, as its Redis key would have expired.

The records' fixed parts (:func:`streamer.state.batch.encode_rows`: header, h and c) live in one
numpy array of slots allocated once (its pages are touched as they fill); a batch is stored and read
with one scatter and one gather, and the entity -> slot map is a dict whose insertion order is the
write order. The kept outputs some records carry (Redis Cluster's) are held beside, by entity.
Bounded by ``max_bytes``: the least recently written out first (every entity a batch reads and steps
is written back in the same batch, so the write order is the use order).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice, repeat

import numpy as np
import numpy.typing as npt

__all__ = ["CacheHits", "StateCache"]

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class CacheHits:
    """What a batch found in the cache: the positions (in the entities asked for) of the hits,
    their records' fixed parts (one row each) and, where one was kept, their kept outputs."""

    at: I64
    rows: npt.NDArray[np.void]
    #: the bytes after the fixed part, per hit (b"": none); None when no hit has any
    tails: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self.at)


class StateCache:
    """Records by entity in preallocated slots, least recently written out first."""

    def __init__(self, max_bytes: int, ttl_s: float = 0.0):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        #: entity -> slot; a write re-inserts, so the first entry is the least recently written
        self._index: dict[str, int] = {}
        #: the slots, as opaque bytes (numpy copies those as blocks; a structured row it copies
        #: field by field), allocated at the first write and again if the layout changes; per
        #: slot, the partition of its entity's events and when it was written (monotonic s)
        self._layout: np.dtype[np.void] = np.dtype("V1")
        self._rows: npt.NDArray[np.void] = np.zeros(0, "V1")
        self._part = np.zeros(0, np.int64)
        self._time = np.zeros(0)
        self._free: list[int] = []
        #: entity -> its record's bytes after the fixed part (kept outputs), for those with any
        self._tails: dict[str, bytes] = {}
        self._tail_bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._index)

    @property
    def nbytes(self) -> int:
        """The bytes of the records held."""
        return len(self._index) * self._layout.itemsize + self._tail_bytes

    @property
    def capacity(self) -> int:
        """How many records of the current layout fit."""
        return len(self._rows)

    def get_many(self, entities: Sequence[str]) -> CacheHits:
        """The cached records of these entities (one gather)."""
        if self.ttl_s and self._index:
            self._expire(time.monotonic() - self.ttl_s)
        n = len(entities)
        slots = np.fromiter(map(self._index.get, entities, repeat(-1)), np.int64, n)
        at = np.flatnonzero(slots >= 0)
        self.hits += len(at)
        self.misses += n - len(at)
        tails = None
        if self._tails and len(at):
            tails = [self._tails.get(entities[j], b"") for j in at.tolist()]
        return CacheHits(at, self._rows[slots[at]].view(self._layout), tails)

    def put_many(
        self,
        entities: Sequence[str],
        partitions: Iterable[int] | I64,
        rows: npt.NDArray[np.void],
        tails: Sequence[bytes] | None = None,
    ) -> None:
        """Keep the records Redis took (distinct entities), with the partition of each one's
        events: their fixed parts ``rows``, and the bytes after them (``tails``, if any)."""
        if rows.dtype != self._layout:
            self._allocate(rows.dtype)
        n, capacity = len(entities), self.capacity
        if n > capacity:  # (only the newest fit)
            self.discard(entities[: n - capacity])
            entities = entities[n - capacity :]
            partitions = np.asarray(list(partitions), np.int64)[n - capacity :]
            rows = rows[n - capacity :]
            tails = None if tails is None else tails[n - capacity :]
            n = capacity
        if not n:
            return
        index = self._index
        # Entities held keep their slots and become the newest; the others take free slots.
        slot = np.fromiter(map(index.pop, entities, repeat(-1)), np.int64, n)
        new = np.flatnonzero(slot < 0)
        if len(new):
            if len(new) > len(self._free):
                self._evict(len(new) - len(self._free))
            slot[new] = self._free[-len(new) :]
            del self._free[-len(new) :]
        index.update(zip(entities, slot.tolist(), strict=True))
        self._rows[slot] = np.ascontiguousarray(rows).view(self._rows.dtype)
        self._part[slot] = (
            partitions
            if isinstance(partitions, np.ndarray)
            else np.fromiter(partitions, np.int64, n)
        )
        self._time[slot] = time.monotonic()
        if tails is not None or self._tails:
            self._set_tails(entities, tails or repeat(b""))
        while self.nbytes > self.max_bytes and index:  # kept outputs beyond the bound
            self._evict(max(1, len(index) // 64))

    def _allocate(self, dtype: np.dtype[np.void]) -> None:
        """Slots for records of this layout (the ones held before are dropped)."""
        capacity = self.max_bytes // max(1, dtype.itemsize)
        self._index.clear()
        self._tails.clear()
        self._tail_bytes = 0
        self._layout = dtype
        # (np.empty: pages are in memory only once a slot on them is written)
        self._rows = np.empty(capacity, np.dtype(("V", dtype.itemsize)))
        self._part = np.empty(capacity, np.int64)
        self._time = np.empty(capacity)
        self._free = list(range(capacity - 1, -1, -1))

    def _set_tails(self, entities: Sequence[str], tails: Iterable[bytes]) -> None:
        held = self._tails
        for e, tail in zip(entities, tails, strict=False):  # (tails may be endless)
            old = held.pop(e, b"")
            self._tail_bytes += len(tail) - len(old)
            if tail:
                held[e] = tail

    def _evict(self, k: int) -> None:
        """Free the slots of the ``k`` least recently written entities."""
        self.discard(list(islice(self._index, k)))

    def _expire(self, oldest: float) -> None:
        """Drop the entries written before ``oldest`` (the first ones: writes are in order)."""
        index = self._index
        while index:
            head = list(islice(index.items(), 256))
            fresh = self._time[[s for _, s in head]] >= oldest
            stale = int(np.argmax(fresh)) if fresh.any() else len(head)
            self.discard([e for e, _ in head[:stale]])
            if stale < len(head):
                break

    def discard(self, entities: Iterable[str]) -> None:
        entities = list(entities)
        self._free.extend(s for s in map(self._index.pop, entities, repeat(-1)) if s >= 0)
        if self._tails:
            self._set_tails(entities, repeat(b""))

    def drop_partitions(self, partitions: Collection[int]) -> int:
        """Forget the entities of these partitions; returns how many were dropped."""
        if not self._index:
            return 0
        slots = np.fromiter(self._index.values(), np.int64, len(self._index))
        gone = np.isin(self._part[slots], np.fromiter(partitions, np.int64, len(partitions)))
        entities = list(self._index)
        self.discard([entities[i] for i in np.flatnonzero(gone).tolist()])
        return int(gone.sum())
