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
with one scatter and one gather, and an entity keeps its slot while it is held (one dict lookup per
entity and batch, no reordering). The kept outputs some records carry (Redis Cluster's) are held
beside, by entity.
Bounded by ``max_bytes``: the least recently written out first, a few more at once when the slots
run out (every entity a batch reads and steps is written back in the same batch, so the write
order is the use order).
"""

from __future__ import annotations

import contextlib
import mmap
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

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


def _slots(n: int, size: int) -> npt.NDArray[np.void]:
    """``n`` slots of ``size`` bytes in a private anonymous mapping, without transparent huge pages.

    Pages are in memory only once a slot on them is written. numpy asks the kernel for huge pages
    for any array of 4 MiB or more, and a huge page's first write may compact memory first: on
    this project's machines the first writes of a batch of new entities then cost 2 to 3 times as
    much on average, and a batch sometimes stalled for 40 ms; in 4 KiB pages each new slot costs
    its page fault and no more.
    """
    if n * size == 0:
        return np.zeros(0, np.dtype(("V", max(1, size))))
    private = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    region = mmap.mmap(-1, n * size, flags=private) if private else mmap.mmap(-1, n * size)
    with contextlib.suppress(AttributeError, OSError):  # (not on every platform)
        region.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(region, np.dtype(("V", size)), n)


class StateCache:
    """Records by entity in preallocated slots, least recently written out first."""

    def __init__(self, max_bytes: int, ttl_s: float = 0.0):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        #: entity -> slot (an entity keeps its slot while it is held)
        self._index: dict[str, int] = {}
        #: the slots, as opaque bytes (numpy copies those as blocks; a structured row it copies
        #: field by field), allocated at the first write and again if the layout changes
        self._layout: np.dtype[np.void] = np.dtype("V1")
        self._rows: npt.NDArray[np.void] = np.zeros(0, "V1")
        #: per slot: its entity (None: free), the partition of its events, when it was written
        #: (monotonic seconds) and the records written before it (the order eviction follows)
        self._names: npt.NDArray[np.object_] = np.zeros(0, object)
        self._used = np.zeros(0, bool)
        self._part = np.zeros(0, np.int64)
        self._time = np.zeros(0)
        self._order = np.zeros(0, np.int64)
        self._writes = 0
        self._free = np.zeros(0, np.int64)
        self._n_free = 0
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
        n = len(entities)
        slots = np.fromiter(map(self._index.get, entities, repeat(-1)), np.int64, n)
        at = np.flatnonzero(slots >= 0)
        if self.ttl_s and len(at):  # a record older than the state TTL: its key expired
            old = self._time[slots[at]] < time.monotonic() - self.ttl_s
            if old.any():
                self.discard([entities[j] for j in at[old].tolist()])
                at = at[~old]
        self.hits += len(at)
        self.misses += n - len(at)
        tails = None
        if self._tails and len(at):
            tails = [self._tails.get(entities[j], b"") for j in at.tolist()]
        return CacheHits(at, self._rows[slots[at]].view(self._layout), tails)

    def absent(self, entities: Sequence[str]) -> list[str]:
        """Those of ``entities`` the cache holds no record of (hits and misses are not counted;
        an entry older than the state TTL counts as held: :meth:`get_many` finds it expired)."""
        index = self._index
        return [e for e in entities if e not in index]

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
        part = np.asarray(partitions if isinstance(partitions, np.ndarray) else list(partitions))
        if n > capacity:  # (only the newest fit)
            self.discard(entities[: n - capacity])
            entities, part, rows = (
                entities[n - capacity :],
                part[n - capacity :],
                rows[n - capacity :],
            )
            tails = None if tails is None else tails[n - capacity :]
            n = capacity
        if not n:
            return
        index = self._index
        # Entities held keep their slots; the others take free ones.
        slot = np.fromiter(map(index.get, entities, repeat(-1)), np.int64, n)
        new = np.flatnonzero(slot < 0)
        if len(new):
            if len(new) > self._n_free:  # the least recently written out, more at once
                self._order[slot[slot >= 0]] = self._writes  # (those stay: written now)
                self._evict(max(len(new) - self._n_free, capacity // 16))
            taken = self._free[self._n_free - len(new) : self._n_free]
            self._n_free -= len(new)
            slot[new] = taken
            names = [entities[j] for j in new.tolist()]
            index.update(zip(names, taken.tolist(), strict=True))
            self._names[taken] = names
            self._used[taken] = True
        self._rows[slot] = np.ascontiguousarray(rows).view(self._rows.dtype)
        self._part[slot] = part
        self._time[slot] = time.monotonic()
        self._order[slot] = np.arange(self._writes, self._writes + n)
        self._writes += n
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
        self._rows = _slots(capacity, dtype.itemsize)
        self._names = np.full(capacity, None, object)
        self._used = np.zeros(capacity, bool)
        self._part = np.zeros(capacity, np.int64)
        self._time = np.zeros(capacity)
        self._order = np.zeros(capacity, np.int64)
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)
        self._n_free = capacity

    def _set_tails(self, entities: Sequence[str], tails: Iterable[bytes]) -> None:
        held = self._tails
        for e, tail in zip(entities, tails, strict=False):  # (tails may be endless)
            old = held.pop(e, b"")
            self._tail_bytes += len(tail) - len(old)
            if tail:
                held[e] = tail

    def _evict(self, k: int) -> None:
        """Free the slots of the ``k`` least recently written entities."""
        used = np.flatnonzero(self._used)
        k = min(k, len(used))
        if k <= 0:
            return
        oldest = used[np.argpartition(self._order[used], k - 1)[:k]] if k < len(used) else used
        self.discard(self._names[oldest].tolist())

    def discard(self, entities: Iterable[str]) -> None:
        entities = list(entities)
        slots = np.fromiter(map(self._index.pop, entities, repeat(-1)), np.int64, len(entities))
        slots = slots[slots >= 0]
        if len(slots):
            self._names[slots] = None
            self._used[slots] = False
            self._free[self._n_free : self._n_free + len(slots)] = slots
            self._n_free += len(slots)
        if self._tails:
            self._set_tails(entities, repeat(b""))

    def drop_partitions(self, partitions: Collection[int]) -> int:
        """Forget the entities of these partitions; returns how many were dropped."""
        if not self._index:
            return 0
        wanted = np.fromiter(partitions, np.int64, len(partitions))
        gone = np.flatnonzero(self._used & np.isin(self._part, wanted))
        self.discard(self._names[gone].tolist())
        return len(gone)
