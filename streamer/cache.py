"""An in-memory cache of state records for the entities a worker is processing.

Optional (``cache_max_mb``): it saves the ``MGET`` of entities seen recently, which is most of them
when a worker owns a partition's entities and sees them again and again. It never changes what the
worker computes:

- writes still go to Redis with the compare-and-set every batch (write-through), and a record enters
  the cache only once Redis took it, so the cache holds what Redis holds, or what Redis lost;
- a refused write (another worker wrote a newer state) evicts the entity: its next batch reads Redis;
- the entries of a partition are dropped when the partition is revoked, since another worker may
  step its entities before it comes back;
- an entry older than the state TTL is a miss, as its Redis key would have expired.

Bounded by the bytes of the records it holds, least recently used out first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence

__all__ = ["StateCache"]


class StateCache:
    def __init__(self, max_bytes: int, ttl_s: float = 0.0):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        #: entity -> (partition, record, time stored)
        self._items: OrderedDict[str, tuple[int, bytes, float]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get_many(self, entities: Sequence[str]) -> list[bytes | None]:
        """The cached records, ``None`` for a miss; hits become the most recently used."""
        items = self._items
        oldest = time.monotonic() - self.ttl_s if self.ttl_s else None
        out: list[bytes | None] = []
        for e in entities:
            hit = items.get(e)
            if hit is None or (oldest is not None and hit[2] < oldest):
                out.append(None)
                continue
            items.move_to_end(e)
            out.append(hit[1])
        found = sum(r is not None for r in out)
        self.hits += found
        self.misses += len(out) - found
        return out

    def put_many(self, items: Iterable[tuple[str, int, bytes]]) -> None:
        """Keep records Redis took: (entity, partition of its events, record)."""
        now = time.monotonic()
        entries = self._items
        for entity, partition, record in items:
            old = entries.pop(entity, None)
            if old is not None:
                self.bytes -= len(old[1])
            entries[entity] = (partition, record, now)
            self.bytes += len(record)
        while self.bytes > self.max_bytes and entries:
            _, (_, record, _) = entries.popitem(last=False)
            self.bytes -= len(record)

    def discard(self, entities: Iterable[str]) -> None:
        for e in entities:
            old = self._items.pop(e, None)
            if old is not None:
                self.bytes -= len(old[1])

    def drop_partitions(self, partitions: Collection[int]) -> int:
        """Forget the entities of these partitions; returns how many were dropped."""
        gone = [e for e, (p, _, _) in self._items.items() if p in partitions]
        self.discard(gone)
        return len(gone)
