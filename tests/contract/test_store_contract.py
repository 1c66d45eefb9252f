"""The store contract: the same checks on every store (memory, one Redis, Redis Cluster).

What the predictor relies on, and nothing else: one call reads or writes a whole batch; a write is
refused when the stored record is no longer the one it was stepped from, or when the stored fence
is at or past it on the same partition; a refused write whose bytes are already stored counts as
saved; states expire after the TTL. The last test runs one random history of writes against a
store and the memory store side by side and asks for the same verdicts and the same contents, so
the memory store that the unit tests use is held to what Redis does.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import numpy as np
import pytest

from streamer.state import MemoryStateStore, RedisStateStore, StateStore, base_of
from streamer.state.batch import decode_outbox, outbox_dtype
from streamer.state.codec import StateRecord, decode, encode
from streamer.state.store import OutboxPart

KINDS = ["memory", "redis", "redis-cluster"]


def rec(offset: int, partition: int = 0, step: int = 1, fill: float = 0.0, at: int = 0) -> bytes:
    return encode(
        StateRecord(
            h=np.full((2, 4), fill, np.float32),
            c=np.full((2, 4), fill, np.float32),
            model_version="v1",
            step=step,
            partition=partition,
            offset=offset,
            updated_ms=at,
            count=1.0,
            mean=0.0,
            var=0.0,
        )
    )


async def open_store(kind: str, request: pytest.FixtureRequest, ns: str, ttl_s: int) -> StateStore:
    if kind == "memory":
        return MemoryStateStore(ttl_s=ttl_s)
    services = request.getfixturevalue("services" if kind == "redis" else "redis_cluster")
    return RedisStateStore.from_url(
        services["redis_url"], ns, ttl_s=ttl_s, cluster=kind == "redis-cluster"
    )


async def put_raw(store: StateStore, entity: str, raw: bytes) -> None:
    """Bytes under an entity's key past every check (another writer, a corrupt record)."""
    if isinstance(store, MemoryStateStore):
        store.set_raw(entity, raw)
    else:
        assert isinstance(store, RedisStateStore)
        await store.redis.set(store.key(entity), raw)


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, ns: str) -> AsyncIterator[StateStore]:
    s = await open_store(request.param, request, ns, ttl_s=600)
    yield s
    await s.aclose()


async def test_round_trip_of_a_batch(store: StateStore) -> None:
    assert await store.get_many([]) == [] and await store.put_many([]) == []
    assert await store.get_many(["a", "b"]) == [None, None]
    a, b = rec(5), rec(7, fill=1.0)
    assert await store.put_many([("a", a), ("b", b)]) == [True, True]
    assert await store.get_many(["b", "c", "a", "b"]) == [b, None, a, b]


async def test_a_stale_writer_cannot_roll_back_newer_state(store: StateStore) -> None:
    assert await store.put_many([("e", rec(10, step=10, fill=10.0))]) == [True]
    # A zombie holding the state of offset 4, and a replay of offset 10 with other bytes: refused.
    assert await store.put_many([("e", rec(4, step=4, fill=4.0))]) == [False]
    assert await store.put_many([("e", rec(10, step=10, fill=99.0))]) == [False]
    got = decode((await store.get_many(["e"]))[0])  # type: ignore[arg-type]
    assert (got.offset, got.step, got.h[0, 0]) == (10, 10, 10.0)
    # A newer offset is accepted; a batch is decided key by key.
    assert await store.put_many([("e", rec(11, step=11)), ("f", rec(0))]) == [True, True]
    assert await store.put_many([("e", rec(3)), ("f", rec(1))]) == [False, True]


async def test_the_same_bytes_again_count_as_saved(store: StateStore) -> None:
    """A write whose reply was lost is retried with the same bytes: saved, nothing changes."""
    first = rec(1, step=1, at=1)
    assert await store.put_many([("r", first)]) == [True]
    assert await store.put_many([("r", first)]) == [True]
    second = rec(2, step=2, at=2)
    assert await store.put_many([("r", second)], [base_of(first)]) == [True]
    assert await store.put_many([("r", second)], [base_of(first)]) == [True]
    assert await store.get_many(["r"]) == [second]


async def test_a_new_source_partition_takes_over(store: StateStore) -> None:
    assert await store.put_many([("e", rec(1000, partition=1))]) == [True]
    assert await store.put_many([("e", rec(0, partition=3))]) == [True]
    assert decode((await store.get_many(["e"]))[0]).partition == 3  # type: ignore[arg-type]


async def test_garbage_under_a_key_is_overwritten(store: StateStore) -> None:
    await put_raw(store, "g", b"not a state record at all, long enough to be read......")
    assert await store.put_many([("g", rec(0))]) == [True]
    await put_raw(store, "h", b"STRM")  # a magic and nothing else
    assert await store.put_many([("h", rec(0))]) == [True]


async def test_a_write_stepped_from_a_record_no_longer_stored_is_refused(
    store: StateStore,
) -> None:
    first = rec(1, step=1, at=1)
    assert await store.put_many([("b", first)], [base_of(None)]) == [True]
    second = rec(2, step=2, at=2)
    # Stepped from the stored record: saved. Stepped from nothing while nothing is stored: saved.
    assert await store.put_many([("b", second), ("n", rec(2))], [base_of(first), b""]) == [
        True,
        True,
    ]
    # Stepped from a record that is no longer there, or from nothing while one is: refused.
    assert await store.put_many([("b", rec(3, step=3))], [base_of(first)]) == [False]
    assert await store.put_many([("n", rec(9))], [b""]) == [False]
    # The stored record changed under the same fence (a reset keeps the fence, not the time).
    await put_raw(store, "b", rec(2, step=0, at=99))
    assert await store.put_many([("b", rec(3, step=3))], [base_of(second)]) == [False]
    assert decode((await store.get_many(["b"]))[0]).step == 0  # type: ignore[arg-type]


async def test_a_base_does_not_lift_the_fence(store: StateStore) -> None:
    """Even stepped from the stored record, a write at or below its fence is refused."""
    stored = rec(5, at=5)
    assert await store.put_many([("f", stored)]) == [True]
    assert await store.put_many([("f", rec(5, at=6))], [base_of(stored)]) == [False]
    assert await store.put_many([("f", rec(4, at=7))], [base_of(stored)]) == [False]
    assert await store.put_many([("f", rec(6, at=8))], [base_of(stored)]) == [True]


async def test_bases_must_match_the_records(store: StateStore) -> None:
    with pytest.raises(ValueError, match="2 bases for 1 records"):
        await store.put_many([("x", rec(0))], [b"", b""])


@pytest.mark.parametrize("kind", KINDS)
async def test_states_expire_after_the_ttl(
    kind: str, request: pytest.FixtureRequest, ns: str
) -> None:
    s = await open_store(kind, request, ns, ttl_s=1)
    try:
        assert await s.put_many([("t", rec(0))]) == [True]
        assert (await s.get_many(["t"]))[0] is not None
        await asyncio.sleep(1.2)
        assert await s.get_many(["t"]) == [None]
        # Expired is gone: a write stepped from nothing is saved again.
        assert await s.put_many([("t", rec(0))], [b""]) == [True]
    finally:
        await s.aclose()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_a_random_history_gives_the_memory_stores_verdicts(
    kind: str, request: pytest.FixtureRequest, ns: str
) -> None:
    """Random writes (new, replayed, stale, other partitions, lost-reply retries, bases right and
    wrong, corrupt records) on a real store and on the memory store: the same verdicts, the
    same records, step by step."""
    real = await open_store(kind, request, ns, ttl_s=600)
    twin = MemoryStateStore(ttl_s=600)
    rng = random.Random(11)
    entities = [f"k{i}" for i in range(12)]
    seen: dict[str, list[bytes | None]] = {e: [None] for e in entities}
    try:
        for round_ in range(150):
            batch = rng.sample(entities, rng.randint(1, 8))
            if rng.random() < 0.1:  # someone writes garbage or another record past the checks
                e = rng.choice(entities)
                raw = rng.choice([b"garbage" * 8, rec(rng.randint(0, 30), at=round_ + 1000)])
                await put_raw(real, e, raw)
                await put_raw(twin, e, raw)
            items, bases = [], []
            for e in batch:
                items.append(
                    (e, rec(rng.randint(0, 30), partition=rng.choice([0, 0, 0, 1]), at=round_))
                )
                if rng.random() < 0.15 and seen[e][-1] is not None:
                    items[-1] = (e, seen[e][-1])  # the same bytes again
                bases.append(base_of(rng.choice(seen[e])))
            use_bases = rng.random() < 0.7
            got = await real.put_many(items, bases if use_bases else None)
            want = await twin.put_many(items, bases if use_bases else None)
            assert got == want, f"round {round_}"
            now = await real.get_many(entities)
            assert now == await twin.get_many(entities), f"round {round_}"
            for e, raw in zip(entities, now, strict=True):
                if raw != seen[e][-1]:
                    seen[e].append(raw)
    finally:
        await real.aclose()


# ----------------------------------------------------------------------------------- outbox --

OUTBOX_KINDS = ["memory", "redis"]


def entries(offsets: list[int], step0: int = 1) -> bytes:
    e = np.zeros(len(offsets), outbox_dtype(2))
    e["offset"], e["step"], e["version"] = offsets, np.arange(len(offsets)) + step0, b"v1"
    e["values"] = np.asarray(offsets, np.float64)[:, None] * [1.0, -1.0]
    return e.tobytes()


def part(p: int, per_key: list[list[int]], trim: int = -1) -> OutboxPart:
    """Entries for items 1..n (one list of offsets each), as the predictor lays them out."""
    blob, bounds, at = b"", [], 0
    for i, offs in enumerate(per_key, start=1):
        chunk = entries(offs)
        bounds.append((i, at, len(chunk)))
        blob, at = blob + chunk, at + len(chunk)
    flat = [o for offs in per_key for o in offs]
    return OutboxPart(p, max(flat), blob, np.asarray(bounds, "<u4").tobytes(), trim)


@pytest.fixture(params=OUTBOX_KINDS)
async def boxed(request: pytest.FixtureRequest, ns: str) -> AsyncIterator[StateStore]:
    s = await open_store(request.param, request, ns, ttl_s=600)
    assert s.outbox
    yield s
    await s.aclose()


def offsets_in(blobs: list[bytes]) -> list[int]:
    return decode_outbox(blobs, 2)["offset"].tolist()


async def test_the_outbox_keeps_the_entries_of_saved_records_only(boxed: StateStore) -> None:
    # "b" was written by someone else since it was read: its write and its entries are refused
    await boxed.put_many([("b", rec(5, at=5))])
    items = [("a", rec(3, at=9)), ("b", rec(7, at=9)), ("c", rec(4, at=9))]
    write = (items, [b"", base_of(rec(1)), b""], [part(0, [[1, 3], [6, 7], [4]])])
    assert await boxed.put_many(*write) == [True, False, True]
    assert offsets_in(await boxed.kept(0, 0)) == [1, 3, 4]
    got = decode_outbox(await boxed.kept(0, 0), 2)
    assert got["values"][:, 1].tolist() == [-1.0, -3.0, -4.0] and set(got["version"]) == {b"v1"}
    assert await boxed.kept(1, 0) == []
    # a retry of the same write (its reply was lost) keeps them once
    assert await boxed.put_many(*write) == [True, False, True]
    assert offsets_in(await boxed.kept(0, 0)) == [1, 3, 4]


async def test_the_outbox_drops_what_is_committed(boxed: StateStore) -> None:
    await boxed.put_many([("a", rec(3))], None, [part(0, [[1, 2, 3]])])
    await boxed.put_many([("b", rec(9))], None, [part(0, [[8, 9]])])
    await boxed.put_many([("c", rec(5))], None, [part(2, [[5]])])
    assert offsets_in(await boxed.kept(0, 0)) == [1, 2, 3, 8, 9]
    assert offsets_in(await boxed.kept(0, 4)) == [8, 9]  # blobs holding offsets from 4 on
    # a write trims its partition below the committed offset: whole blobs below it go
    await boxed.put_many([("d", rec(12))], None, [part(0, [[12]], trim=9)])
    assert offsets_in(await boxed.kept(0, 0)) == [8, 9, 12]
    # a worker at rest trims the rest
    await boxed.trim({0: 13, 2: 5})
    assert await boxed.kept(0, 0) == [] and offsets_in(await boxed.kept(2, 0)) == [5]
