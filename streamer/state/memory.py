"""The in-memory store: states in a dict of this process, with the Redis store's exact semantics.

For unit tests of everything above the store (the predictor, the pipeline), for the GPU check on a
machine with no Redis, and for notebooks. It keeps the same encoded records and refuses the same
writes as the Lua compare-and-set of :mod:`streamer.state.redis` (the contract suite in
``tests/contract/`` runs the same checks on both): a write is refused when the stored record is not
the one it was stepped from (with ``bases``), or when the stored record's fence is at or past the
new one on the same partition; a refused write whose bytes are already stored counts as saved.
Its outbox keeps the same blobs per partition as Redis's sorted sets.
States expire ``ttl_s`` after their last write, as Redis keys do.

Faults can be injected by wrapping it (see ``tests/contract/``): no mocks needed.
"""

from __future__ import annotations

import struct
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from streamer.state.codec import FENCE, MAGIC, StateRecord, base_of, decode
from streamer.state.store import OutboxPart

__all__ = ["MemoryStateStore"]

_FENCE = struct.Struct("<iq")


class MemoryStateStore:
    """States of one model in this process. Cheap to make: one per test."""

    outbox = True

    def __init__(self, ttl_s: float = 0.0):
        self.ttl_s = ttl_s
        #: entity -> (record, expiry on the monotonic clock or 0.0 for none)
        self._items: dict[str, tuple[bytes, float]] = {}
        #: partition -> {blob: its last offset}: the outbox, as Redis's sorted sets hold it
        self._boxes: dict[int, dict[bytes, int]] = {}
        #: round trips served, and the records written (for tests)
        self.reads = 0
        self.writes = 0
        self.closed = False

    def _get(self, entity: str, now: float) -> bytes | None:
        item = self._items.get(entity)
        if item is None:
            return None
        if item[1] and item[1] <= now:
            del self._items[entity]
            return None
        return item[0]

    async def get_many(self, entities: Sequence[str]) -> list[bytes | None]:
        self.reads += 1
        now = time.monotonic()
        return [self._get(e, now) for e in entities]

    async def put_many(
        self,
        items: Sequence[tuple[str, bytes]],
        bases: Sequence[bytes] | None = None,
        outbox: Sequence[OutboxPart] = (),
    ) -> list[bool]:
        if not items:
            return []
        if bases is not None and len(bases) != len(items):
            raise ValueError(f"{len(bases)} bases for {len(items)} records")
        now = time.monotonic()
        expiry = now + self.ttl_s if self.ttl_s else 0.0
        results = []
        for i, (entity, new) in enumerate(items):
            cur = self._get(entity, now)
            result = _verdict(cur, new, None if bases is None else bases[i])
            if result == 1:
                self._items[entity] = (new, expiry)
                self.writes += 1
            results.append(result)
        for part in outbox:
            box = self._boxes.setdefault(part.partition, {})
            if part.trim != -1:
                for blob in [b for b, last in box.items() if last < part.trim]:
                    del box[blob]
            blob = part.blob
            if 0 in results:  # cut out the entries of refused records
                bounds = struct.iter_unpack("<III", part.bounds)
                blob = b"".join(part.blob[a : a + n] for i, a, n in bounds if results[i - 1] != 0)
            if blob:
                box[blob] = part.last_offset
        return [r != 0 for r in results]

    async def kept(self, partition: int, since: int) -> list[bytes]:
        box = self._boxes.get(partition, {})
        return [blob for blob, last in box.items() if last >= since]

    async def trim(self, committed: Mapping[int, int]) -> None:
        for p, offset in committed.items():
            box = self._boxes.get(p, {})
            for blob in [b for b, last in box.items() if last < offset]:
                del box[blob]

    def delete(self, entity: str) -> bool:
        """Forget one state (``streamer state delete`` on Redis); whether there was one."""
        return self._items.pop(entity, None) is not None

    def set_raw(self, entity: str, record: bytes) -> None:
        """Store bytes as they are, past every check (tests: another writer, a corrupt record)."""
        expiry = time.monotonic() + self.ttl_s if self.ttl_s else 0.0
        self._items[entity] = (record, expiry)

    async def scan(
        self, pattern: str = "*", cursor: int = 0, count: int = 1000
    ) -> AsyncIterator[tuple[int, list[str]]]:
        """Pages of entity ids matching a glob ``pattern``, as the Redis store's SCAN gives them."""
        import fnmatch

        now = time.monotonic()
        names = sorted(e for e in list(self._items) if self._get(e, now) is not None)
        names = [e for e in names if fnmatch.fnmatchcase(e, pattern)]
        while True:
            page = names[cursor : cursor + count]
            cursor = 0 if cursor + count >= len(names) else cursor + count
            yield cursor, page
            if cursor == 0:
                return

    async def get(self, entity: str) -> StateRecord | None:
        (raw,) = await self.get_many([entity])
        return None if raw is None else decode(raw)

    def __len__(self) -> int:
        now = time.monotonic()
        return sum(1 for e in list(self._items) if self._get(e, now) is not None)

    async def aclose(self) -> None:
        self.closed = True


def _verdict(cur: bytes | None, new: bytes, base: bytes | None) -> int:
    """1 write, 2 already stored (a retried write), 0 refused: the Lua script's rule."""
    if base is not None and base_of(cur) != base:
        return 2 if cur == new else 0
    if cur is not None and len(cur) >= FENCE.stop and cur[:4] == MAGIC:
        cp, co = _FENCE.unpack_from(cur, FENCE.start)
        np_, no = _FENCE.unpack_from(new, FENCE.start)
        if cp == np_ and co >= no:
            return 2 if co == no and cur == new else 0
    return 1
