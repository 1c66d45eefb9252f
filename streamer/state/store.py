"""The store protocol: what every state store does, one round trip per batch.

Stores move encoded records (:mod:`streamer.state.codec`) in and out, whole batches at a time. The
implementations: :class:`~streamer.state.redis.RedisStateStore` (one Redis),
:class:`~streamer.state.cluster.RedisClusterStateStore` (Redis Cluster) and
:class:`~streamer.state.memory.MemoryStateStore` (this process: tests, the GPU check, notebooks).
Every one passes the same contract suite (``tests/contract/``).
Keys are readable: ``streamer:{model}:{entity}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["StateStore", "state_key"]


def state_key(model: str, entity: str) -> str:
    """The Redis key of an entity's state.

    >>> state_key("retail", "store-7")
    'streamer:retail:store-7'
    """
    return f"streamer:{model}:{entity}"


class StateStore(Protocol):
    """Where states live. Each call is one round trip, whatever the number of entities."""

    async def get_many(self, entities: Sequence[str]) -> list[bytes | None]:
        """The encoded records of the entities, ``None`` where an entity has none."""
        ...

    async def put_many(
        self, items: Sequence[tuple[str, bytes]], bases: Sequence[bytes] | None = None
    ) -> list[bool]:
        """Save records unless the stored one is as new or newer, or (with ``bases``) unless it is
        no longer the one each new record was stepped from; True where saved."""
        ...

    async def aclose(self) -> None: ...
