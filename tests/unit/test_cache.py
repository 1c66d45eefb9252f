from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streamer.state.cache import StateCache

#: a record's fixed part, 10 bytes (the cache holds any fixed layout)
ROW = np.dtype([("v", "S10")])


def rows(*values: bytes) -> npt.NDArray[np.void]:
    return np.array([(v,) for v in values], ROW)


def got(cache: StateCache, entities: list[str]) -> list[bytes | None]:
    """What the cache holds for each entity (its fixed part, then its tail), None for a miss."""
    hits = cache.get_many(entities)
    out: list[bytes | None] = [None] * len(entities)
    tails = hits.tails or [b""] * len(hits)
    for j, row, tail in zip(hits.at.tolist(), hits.rows, tails, strict=True):
        out[j] = row["v"] + tail
    return out


def test_hits_misses_and_the_least_recently_written_out_first() -> None:
    cache = StateCache(max_bytes=30)  # three slots of 10 bytes
    cache.put_many(["a", "b", "c"], [0, 0, 1], rows(b"x" * 10, b"y" * 10, b"z" * 10))
    assert cache.capacity == 3
    assert got(cache, ["a", "d"]) == [b"x" * 10, None]
    cache.put_many(["a"], [0], rows(b"x" * 10))  # the predictor writes back what it read
    cache.put_many(["d"], [1], rows(b"w" * 10))  # no free slot: "b", the oldest, goes
    assert got(cache, ["a", "b", "c", "d"]) == [b"x" * 10, None, b"z" * 10, b"w" * 10]
    assert (cache.hits, cache.misses, cache.nbytes, len(cache)) == (4, 2, 30, 3)


def test_replacing_an_entry_keeps_its_slot_and_counts_its_bytes_once() -> None:
    cache = StateCache(max_bytes=100)
    cache.put_many(["a"], [0], rows(b"1" * 10))
    cache.put_many(["a"], [0], rows(b"2" * 10))
    assert cache.nbytes == 10 and got(cache, ["a"]) == [b"2" * 10]


def test_revoked_partitions_and_refused_entities_are_dropped_and_their_slots_reused() -> None:
    cache = StateCache(max_bytes=40)
    cache.put_many(["a", "b", "c", "d"], [0, 1, 2, 1], rows(b"1", b"2", b"3", b"4"))
    assert cache.drop_partitions({1, 5}) == 2
    cache.discard(["a", "zz"])
    assert got(cache, ["a", "b", "c", "d"]) == [None, None, b"3", None]
    assert cache.nbytes == 10
    cache.put_many(["e", "f", "g"], [0, 0, 0], rows(b"5", b"6", b"7"))  # the freed slots
    assert got(cache, ["c", "e", "f", "g"]) == [b"3", b"5", b"6", b"7"]


def test_an_entry_older_than_the_state_ttl_is_a_miss() -> None:
    cache = StateCache(max_bytes=1000, ttl_s=0.05)
    cache.put_many(["a"], [0], rows(b"1"))
    assert got(cache, ["a"]) == [b"1"]
    time.sleep(0.08)
    assert got(cache, ["a"]) == [None]
    assert len(cache) == 0


def test_writes_refresh_the_order_and_the_time() -> None:
    """A write moves an entity to the newest end: eviction and expiry go oldest first."""
    cache = StateCache(max_bytes=1000, ttl_s=0.1)
    cache.put_many(["a", "b"], [0, 0], rows(b"1", b"2"))
    time.sleep(0.06)
    cache.put_many(["a"], [0], rows(b"3"))
    time.sleep(0.06)
    assert got(cache, ["a", "b"]) == [b"3", None]
    assert len(cache) == 1 and cache.nbytes == 10


def test_kept_outputs_are_held_beside_and_count_towards_the_bound() -> None:
    cache = StateCache(max_bytes=60)
    cache.put_many(["a", "b"], [0, 0], rows(b"1", b"2"), [b"tail-of-a", b""])
    assert got(cache, ["a", "b"]) == [b"1tail-of-a", b"2"]
    assert cache.nbytes == 20 + 9
    cache.put_many(["a"], [0], rows(b"3"))  # written again without: its old tail goes
    assert got(cache, ["a"]) == [b"3"] and cache.nbytes == 20
    cache.put_many(["c"], [0], rows(b"4"), [b"x" * 35])  # over 60 bytes: the oldest go
    assert cache.nbytes <= 60 and got(cache, ["c"]) == [b"4" + b"x" * 35]
    assert got(cache, ["b"]) == [None]


def test_records_of_another_layout_start_the_cache_over() -> None:
    cache = StateCache(max_bytes=100)
    cache.put_many(["a", "b"], [0, 0], rows(b"1", b"2"))
    wide = np.array([(b"w" * 20,)], np.dtype([("v", "S20")]))
    cache.put_many(["c"], [0], wide)  # (a model of another shape was swapped in)
    assert cache.capacity == 5 and len(cache) == 1
    hits = cache.get_many(["a", "c"])
    assert hits.at.tolist() == [1] and hits.rows[0]["v"] == b"w" * 20


def test_a_batch_larger_than_the_cache_keeps_its_newest_records() -> None:
    cache = StateCache(max_bytes=20)
    cache.put_many(["x"], [0], rows(b"0"))
    cache.put_many(["a", "b", "c"], [0, 1, 2], rows(b"1", b"2", b"3"))
    assert got(cache, ["x", "a", "b", "c"]) == [None, None, b"2", b"3"]
    assert cache.drop_partitions({2}) == 1 and len(cache) == 1


def _mapping_of(address: int) -> dict[str, str]:
    """The fields of this process's memory mapping that holds ``address`` (Linux smaps)."""
    fields: dict[str, str] = {}
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
    return fields


def test_the_slots_take_no_transparent_huge_pages_and_are_written_in_place() -> None:
    # A first write to a huge page may wait for the kernel to compact memory (tens of ms in a
    # batch); numpy asks for them for any array of 4 MiB or more, as the slots are.
    cache = StateCache(max_bytes=64 * 2**20)
    big = np.dtype([("v", "S1000")])
    cache.put_many(["a", "b"], [0, 1], np.array([(b"x" * 1000,), (b"y" * 1000,)], big))
    hits = cache.get_many(["b", "a"])
    assert [r["v"][:1] for r in hits.rows] == [b"y", b"x"]
    middle = cache._rows.__array_interface__["data"][0] + cache._rows.nbytes // 2
    mapping = _mapping_of(middle)
    assert mapping, "the slots are in no mapping of this process"
    assert mapping.get("THPeligible", "0") == "0"
    assert mapping.get("AnonHugePages", "0 kB") == "0 kB"
    # and numpy alone would have asked for them, where the kernel gives any: the test can tell
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[never]" not in thp.read_text():
        plain = np.empty(len(cache._rows), cache._rows.dtype)
        middle = plain.__array_interface__["data"][0] + plain.nbytes // 2
        assert _mapping_of(middle).get("THPeligible") == "1"
