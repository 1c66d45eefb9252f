"""The store protocol: what every state store does, one round trip per batch.

Stores move encoded records (:mod:`streamer.state.codec`) in and out, whole batches at a time. The
implementations: :class:`~streamer.state.redis.RedisStateStore` (one Redis),
:class:`~streamer.state.cluster.RedisClusterStateStore` (Redis Cluster) and
:class:`~streamer.state.memory.MemoryStateStore` (this process: tests, the GPU check, notebooks).
Every one passes the same contract suite (``tests/contract/``).
Keys are readable: ``streamer:{model}:{entity}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["OutboxPart", "StateStore", "outbox_key", "state_key"]


def state_key(model: str, entity: str) -> str:
    """The Redis key of an entity's state.

    >>> state_key("retail", "store-7")
    'streamer:retail:store-7'
    """
    return f"streamer:{model}:{entity}"


def outbox_key(model: str, partition: int) -> str:
    """The Redis key of a partition's outbox (predictions kept for re-emission).

    >>> outbox_key("retail", 3)
    'streamer-outbox:retail:3'
    """
    return f"streamer-outbox:{model}:{partition}"


@dataclass(frozen=True)
class OutboxPart:
    """The predictions a batch's events of one partition got, for a store with an outbox.

    ``blob`` holds the entries (:func:`streamer.state.batch.outbox_dtype`) key by key; ``bounds``
    says which bytes are whose: per key, its position among the batch's items (from 1), the start
    and the length of its entries, three little-endian uint32. Entries of a key whose write is
    refused are left out. ``trim``: the partition's committed offset; the blobs of batches whose
    events all lie below it are dropped (-1: none).
    """

    partition: int
    last_offset: int
    blob: bytes
    bounds: bytes
    trim: int = -1


class StateStore(Protocol):
    """Where states live. Each call is one round trip, whatever the number of entities.

    A store with an ``outbox`` keeps the predictions of applied events outside the states until
    their offsets are committed (:class:`OutboxPart`, written in the same atomic call as the
    states); one without keeps them inside the records (the predictor encodes them there).
    """

    #: whether :meth:`put_many` takes an outbox (else kept predictions go inside the records)
    outbox: bool

    async def get_many(self, entities: Sequence[str]) -> list[bytes | None]:
        """The encoded records of the entities, ``None`` where an entity has none."""
        ...

    async def put_many(
        self,
        items: Sequence[tuple[str, bytes]],
        bases: Sequence[bytes] | None = None,
        outbox: Sequence[OutboxPart] = (),
    ) -> list[bool]:
        """Save records unless the stored one is as new or newer, or (with ``bases``) unless it is
        no longer the one each new record was stepped from; True where saved. The outbox parts'
        entries of saved records are kept, in the same atomic call."""
        ...

    async def kept(self, partition: int, since: int) -> list[bytes]:
        """The outbox blobs of a partition that hold entries at or above offset ``since``."""
        ...

    async def trim(self, committed: Mapping[int, int]) -> None:
        """Drop the outbox blobs whose entries all lie below their partition's committed
        offset (a worker at rest calls it: the last batch's blobs go too)."""
        ...

    async def aclose(self) -> None: ...
