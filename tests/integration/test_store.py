"""RedisStateStore against a real Redis: one round trip each way, compare-and-set, TTL."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.codec import StateRecord, decode, encode
from streamer.state import RedisStateStore


def rec(offset: int, partition: int = 0, step: int = 1, fill: float = 0.0) -> bytes:
    return encode(
        StateRecord(
            h=np.full((2, 4), fill, np.float32),
            c=np.full((2, 4), fill, np.float32),
            model_version="v1",
            step=step,
            partition=partition,
            offset=offset,
            updated_ms=0,
            count=1.0,
            mean=0.0,
            var=0.0,
        )
    )


@pytest.fixture
async def store(services: dict[str, str], ns: str):  # type: ignore[no-untyped-def]
    s = RedisStateStore.from_url(services["redis_url"], ns, ttl_s=600)
    yield s
    await s.aclose()


async def test_get_and_put_many_round_trip(store: RedisStateStore) -> None:
    assert await store.get_many(["a", "b"]) == [None, None]
    assert await store.put_many([("a", rec(5)), ("b", rec(7, fill=1.0))]) == [True, True]
    a, b, c = await store.get_many(["a", "b", "c"])
    assert a is not None and b is not None and c is None
    assert decode(a).offset == 5 and decode(b).h[0, 0] == 1.0
    ttl = await store.redis.pttl(store.key("a"))
    assert 590_000 < ttl <= 600_000


async def test_a_stale_writer_cannot_roll_back_newer_state(store: RedisStateStore) -> None:
    assert await store.put_many([("e", rec(10, step=10, fill=10.0))]) == [True]
    # A zombie worker still holding the state of offset 4 tries to save it, and a replay of
    # offset 10 tries to save again: both refused, the newer state stays.
    assert await store.put_many([("e", rec(4, step=4, fill=4.0))]) == [False]
    assert await store.put_many([("e", rec(10, step=10, fill=99.0))]) == [False]
    got = decode((await store.get_many(["e"]))[0])  # type: ignore[arg-type]
    assert (got.offset, got.step, got.h[0, 0]) == (10, 10, 10.0)
    # A newer offset is accepted; mixed batches are decided key by key.
    assert await store.put_many([("e", rec(11, step=11)), ("f", rec(0))]) == [True, True]
    assert await store.put_many([("e", rec(3)), ("f", rec(1))]) == [False, True]


async def test_a_new_source_partition_takes_over(store: RedisStateStore) -> None:
    """Topic recreated or repartitioned: offsets of the new partition start low, and must apply."""
    assert await store.put_many([("e", rec(1000, partition=1))]) == [True]
    assert await store.put_many([("e", rec(0, partition=3))]) == [True]
    assert decode((await store.get_many(["e"]))[0]).partition == 3  # type: ignore[arg-type]


async def test_garbage_under_a_key_is_overwritten(store: RedisStateStore) -> None:
    await store.redis.set(
        store.key("g"), b"not a state record at all, long enough to be read......"
    )
    assert await store.put_many([("g", rec(0))]) == [True]


async def test_ttl_zero_keeps_states_forever(services: dict[str, str], ns: str) -> None:
    s = RedisStateStore.from_url(services["redis_url"], ns, ttl_s=0)
    try:
        await s.put_many([("k", rec(0))])
        assert await s.redis.pttl(s.key("k")) == -1
    finally:
        await s.aclose()
