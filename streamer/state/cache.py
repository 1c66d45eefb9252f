"""An in-memory cache of state records for the entities a worker is processing.

Optional (``cache_max_mb``): it saves the ``MGET`` of entities seen recently, which is most of them
when a worker owns a partition's entities and sees them again and again. It never changes what the
worker computes:

- writes still go to Redis with the compare-and-set every batch (write-through), and a record enters
  the cache only once Redis took it, so the cache holds what Redis holds;
- the compare-and-set refuses a write stepped from a record Redis no longer holds (another worker
  wrote a newer state, ``streamer state reset`` or ``delete`` changed it, it expired, Redis lost
  it); a refused write evicts the entity, whose events are stepped again from what Redis holds;
- the entries of a partition are dropped when the partition is revoked, since another worker may
  step its entities before it comes back;
- an entry older than the state TTL is a miss, as its Redis key would have expired.

Bounded by the bytes of the records it holds, least recently written out first: every entity a
batch reads and steps is written back in the same batch, so the write order is the use order.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence

__all__ = ["StateCache"]


class StateCache:
    def __init__(self, max_bytes: int, ttl_s: float = 0.0):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        #: entity -> (record, partition of its events, time stored); a write re-inserts, so the
        #: first entry (dicts keep insertion order) is the least recently written
        self._items: dict[str, tuple[bytes, int, float]] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get_many(self, entities: Sequence[str]) -> list[bytes | None]:
        """The cached records, ``None`` for a miss."""
        get = self._items.get
        found = [get(e) for e in entities]
        if self.ttl_s:
            oldest = time.monotonic() - self.ttl_s
            out = [None if f is None or f[2] < oldest else f[0] for f in found]
        else:
            out = [None if f is None else f[0] for f in found]
        misses = out.count(None)
        self.hits += len(out) - misses
        self.misses += misses
        return out

    def put_many(self, items: Iterable[tuple[str, int, bytes]]) -> None:
        """Keep records Redis took: (entity, partition of its events, record)."""
        now = time.monotonic()
        entries = self._items
        pop = entries.pop
        added = 0
        for entity, partition, record in items:
            old = pop(entity, None)
            if old is not None:
                added -= len(old[0])
            entries[entity] = (record, partition, now)
            added += len(record)
        self.bytes += added
        if self.bytes > self.max_bytes:  # the least recently written out, as many as needed
            excess, victims = self.bytes - self.max_bytes, []
            for entity, entry in entries.items():
                if excess <= 0:
                    break
                victims.append(entity)
                excess -= len(entry[0])
            for entity in victims:
                self.bytes -= len(pop(entity)[0])

    def discard(self, entities: Iterable[str]) -> None:
        for e in entities:
            old = self._items.pop(e, None)
            if old is not None:
                self.bytes -= len(old[0])

    def drop_partitions(self, partitions: Collection[int]) -> int:
        """Forget the entities of these partitions; returns how many were dropped."""
        gone = [e for e, (_, p, _) in self._items.items() if p in partitions]
        self.discard(gone)
        return len(gone)
