"""State: the per-entity record, the stores that keep it, and the stores that wrap a store.

Nothing outside this package knows a byte of the record. Its modules:

- :mod:`~streamer.state.codec`: the record's format, one record at a time;
- :mod:`~streamer.state.batch`: a whole batch of records as columns, and the outbox's entries;
- :mod:`~streamer.state.store`: the protocol every store follows, and the key of a state;
- :mod:`~streamer.state.redis`, :mod:`~streamer.state.cluster`: one Redis, Redis Cluster;
- :mod:`~streamer.state.memory`: this process's memory, with Redis's semantics (tests, GPU check);
- :mod:`~streamer.state.overlay`: the records of batches on their way to the store, read first;
- :mod:`~streamer.state.cache`: the worker's cache of records Redis took, as preallocated slots.

Every store passes one contract suite (``tests/contract/``).
"""

from __future__ import annotations

from streamer.state.batch import StateBatch
from streamer.state.cache import StateCache
from streamer.state.cluster import RedisClusterStateStore
from streamer.state.codec import StateRecord, base_of, decode, encode
from streamer.state.memory import MemoryStateStore
from streamer.state.redis import RedisStateStore, classify_redis_error, redis_client
from streamer.state.store import StateStore, state_key

__all__ = [
    "MemoryStateStore",
    "RedisClusterStateStore",
    "RedisStateStore",
    "StateBatch",
    "StateCache",
    "StateRecord",
    "StateStore",
    "base_of",
    "classify_redis_error",
    "decode",
    "encode",
    "redis_client",
    "state_key",
]
