from __future__ import annotations

import time

from streamer.state.cache import StateCache


def test_hits_misses_and_the_least_recently_written_out_first() -> None:
    cache = StateCache(max_bytes=30)
    cache.put_many(["a", "b", "c"], [0, 0, 1], [b"xxxxxxxxxx", b"yyyyyyyyyy", b"zzzzzzzzzz"])
    assert cache.get_many(["a", "d"]) == [b"x" * 10, None]
    cache.put_many(
        ["a"], [0], [b"xxxxxxxxxx"]
    )  # the predictor writes back what it read: "a" is newest
    cache.put_many(["d"], [1], [b"wwwwwwwwww"])  # over the bound: "b", the oldest, goes
    assert cache.get_many(["a", "b", "c", "d"]) == [b"x" * 10, None, b"z" * 10, b"w" * 10]
    assert (cache.hits, cache.misses, cache.bytes, len(cache)) == (4, 2, 30, 3)


def test_replacing_an_entry_counts_its_bytes_once() -> None:
    cache = StateCache(max_bytes=100)
    cache.put_many(["a"], [0], [b"1111111111111111111111111111111111111111"])
    cache.put_many(["a"], [0], [b"22222222222222222222222222222222222222222222222222"])
    assert cache.bytes == 50 and cache.get_many(["a"]) == [b"2" * 50]


def test_revoked_partitions_and_refused_entities_are_dropped() -> None:
    cache = StateCache(max_bytes=1000)
    cache.put_many(["a", "b", "c", "d"], [0, 1, 2, 1], [b"1", b"2", b"3", b"4"])
    assert cache.drop_partitions({1, 5}) == 2
    cache.discard(["a", "zz"])
    assert cache.get_many(["a", "b", "c", "d"]) == [None, None, b"3", None]
    assert cache.bytes == 1


def test_an_entry_older_than_the_state_ttl_is_a_miss() -> None:
    cache = StateCache(max_bytes=1000, ttl_s=0.05)
    cache.put_many(["a"], [0], [b"1"])
    assert cache.get_many(["a"]) == [b"1"]
    time.sleep(0.08)
    assert cache.get_many(["a"]) == [None]


def test_writes_refresh_the_order_and_the_time() -> None:
    """A write moves an entity to the newest end: eviction and expiry go oldest first."""
    cache = StateCache(max_bytes=1000, ttl_s=0.1)
    cache.put_many(["a", "b"], [0, 0], [b"1", b"2"])
    time.sleep(0.06)
    cache.put_many(["a"], [0], [b"3"])
    time.sleep(0.06)
    assert cache.get_many(["a", "b"]) == [b"3", None]
    assert len(cache) == 1 and cache.bytes == 1
