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
from itertools import repeat

__all__ = ["StateCache"]


class StateCache:
    """Records by entity in insertion order (a dict), with their partitions and times in dicts
    beside: every operation on a batch is a few C-level dict calls, no per-entity Python."""

    def __init__(self, max_bytes: int, ttl_s: float = 0.0):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        #: entity -> record; a write re-inserts, so the first entry (dicts keep insertion order)
        #: is the least recently written
        self._items: dict[str, bytes] = {}
        #: entity -> partition of its events, and -> when it was stored (monotonic seconds)
        self._parts: dict[str, int] = {}
        self._times: dict[str, float] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get_many(self, entities: Sequence[str]) -> list[bytes | None]:
        """The cached records, ``None`` for a miss."""
        if self.ttl_s:
            self._expire(time.monotonic() - self.ttl_s)
        out = list(map(self._items.get, entities))
        misses = out.count(None)
        self.hits += len(out) - misses
        self.misses += misses
        return out

    def put_many(
        self, entities: Sequence[str], partitions: Iterable[int], records: Sequence[bytes]
    ) -> None:
        """Keep records Redis took, with the partition of each one's events."""
        entries = self._items
        old = list(map(entries.pop, entities, repeat(None)))  # (re-inserted: now the newest)
        entries.update(zip(entities, records, strict=True))
        self._parts.update(zip(entities, partitions, strict=True))
        self._times.update(zip(entities, repeat(time.monotonic())))
        self.bytes += sum(map(len, records)) - sum(map(len, filter(None, old)))
        if self.bytes > self.max_bytes:  # the least recently written out, as many as needed
            excess, victims = self.bytes - self.max_bytes, []
            for entity, record in entries.items():
                if excess <= 0:
                    break
                victims.append(entity)
                excess -= len(record)
            self.discard(victims)

    def _expire(self, oldest: float) -> None:
        """Drop the entries written before ``oldest`` (the first ones: writes are in order)."""
        times, gone = self._times, []
        for entity in self._items:
            if times[entity] >= oldest:
                break
            gone.append(entity)
        self.discard(gone)

    def discard(self, entities: Iterable[str]) -> None:
        for e in entities:
            old = self._items.pop(e, None)
            if old is not None:
                self.bytes -= len(old)
                del self._parts[e], self._times[e]

    def drop_partitions(self, partitions: Collection[int]) -> int:
        """Forget the entities of these partitions; returns how many were dropped."""
        gone = [e for e, p in self._parts.items() if p in partitions]
        self.discard(gone)
        return len(gone)
