"""The states as columns through the writes on their way, the cache and the store
(streamer.state.stack), on the in-memory store."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from streamer.errors import StoreUnavailable
from streamer.state import MemoryStateStore, StateCache
from streamer.state.batch import StateBatch
from streamer.state.codec import base_of
from streamer.state.stack import Layout, StateStack

pytestmark = pytest.mark.asyncio
LAYOUT = Layout(layers=2, hidden=8, width=1)


def stepped(loaded: StateBatch, offset: int, seed: int) -> StateBatch:
    """The states after one more event of partition 0 at ``offset``."""
    st = loaded.take(np.arange(len(loaded)))
    st.h[:] = np.random.default_rng(seed).standard_normal(st.h.shape)
    st.c[:] = st.h * 2
    st.step += 1
    st.partition[:], st.offset[:] = 0, offset
    st.updated_ms[:] = 1_000 + offset
    return st


async def save(stack: StateStack, entities: list[str], offset: int) -> list[bool]:
    read = await stack.read(entities, LAYOUT)
    st = stepped(read.states, offset, seed=offset)
    staged = stack.stage(stack.batch(), entities, np.arange(len(entities)), st, read, "float32")
    return await stack.write(staged)


def same(a: StateBatch, b: StateBatch) -> None:
    for name in ("h", "c", "step", "partition", "offset", "updated_ms", "version"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


async def test_cache_hits_read_as_the_store_holds_them_with_the_same_bases() -> None:
    store = MemoryStateStore()
    cached = StateStack(store, StateCache(2**20))
    entities = [f"e{i}" for i in range(6)]
    assert await save(cached, entities[:4], offset=10) == [True] * 4
    read = await cached.read(entities, LAYOUT)  # four from the cache, two from the store
    assert cached.cache is not None and cached.cache.hits == 4
    plain = await StateStack(store).read(entities, LAYOUT)
    same(read.states, plain.states)
    assert read.bases == plain.bases == [base_of(r) for r in await store.get_many(entities)]
    assert read.bases[4:] == [b"", b""] and read.read_s is not None and not read.overlaid


async def test_the_next_batch_reads_states_on_their_way_and_refusals_leave_everywhere() -> None:
    store = MemoryStateStore()
    stack = StateStack(store, StateCache(2**20))
    entities = ["a", "b"]
    await save(stack, entities, offset=1)
    read = await stack.read(entities, LAYOUT)
    first = stack.stage(
        stack.batch(), entities, np.arange(2), stepped(read.states, 2, 2), read, "float32"
    )
    ahead = await stack.read(entities, LAYOUT)  # before the store has them
    assert ahead.overlaid and ahead.states.offset.tolist() == [2, 2]
    # Another writer moves "b" on: the compare-and-set refuses this worker's write of "b".
    other = StateStack(store)
    theirs = await other.read(["b"], LAYOUT)
    moved = stepped(theirs.states, 5, 5)
    await other.write(other.stage(other.batch(), ["b"], np.arange(1), moved, theirs, "float32"))
    refusals = stack.in_flight.refusals
    assert await stack.write(first) == [True, False]
    assert stack.stale(refusals) and len(stack.in_flight) == 0
    assert stack.cache is not None and len(stack.cache) == 1  # "b" left the cache
    again = await stack.read(entities, LAYOUT)
    assert again.states.offset.tolist() == [2, 5] and not again.overlaid


class Asked(MemoryStateStore):
    """The in-memory store, remembering which entities each read asked for; the first
    ``failing`` reads fail as an outage does."""

    def __init__(self, failing: int = 0):
        super().__init__()
        self.asked: list[list[str]] = []
        self.failing = failing

    async def get_many(self, entities: Sequence[str]) -> list[bytes | None]:
        self.asked.append(list(entities))
        if self.failing:
            self.failing -= 1
            raise StoreUnavailable("Redis is down")
        return await super().get_many(entities)


async def test_a_prefetch_asks_the_store_only_for_what_nothing_nearer_holds() -> None:
    store = Asked()
    stack = StateStack(store, StateCache(2**20))
    await save(stack, ["a", "b"], offset=1)  # both cached
    read = await stack.read(["c"], LAYOUT)
    stack.stage(stack.batch(), ["c"], np.arange(1), stepped(read.states, 2, 2), read, "float32")
    await save(StateStack(store), ["d"], offset=3)  # stored by another stack
    store.asked.clear()
    entities = ["a", "c", "d", "e"]
    prefetch = stack.prefetch(entities)  # "c" is on its way
    assert prefetch.entities == ["d", "e"]
    got = await stack.read(entities, LAYOUT, prefetch)
    assert store.asked == [["d", "e"]]  # the batch's read needed no round trip of its own
    plain = await StateStack(store).read(entities, LAYOUT)
    same(got.states.take(np.array([0, 2, 3])), plain.states.take(np.array([0, 2, 3])))
    assert got.overlaid and got.states.offset.tolist() == [1, 2, 3, -1]
    assert got.bases[2:] == plain.bases[2:]


async def test_a_save_refused_since_the_prefetch_makes_the_batch_read_the_store_again() -> None:
    store = Asked()
    stack = StateStack(store)
    await save(stack, ["x", "y"], offset=1)
    read = await stack.read(["y"], LAYOUT)
    mine = stack.stage(
        stack.batch(), ["y"], np.arange(1), stepped(read.states, 2, 2), read, "float32"
    )
    prefetch = stack.prefetch(["x"])
    await prefetch.records()
    # Another writer moves both on; this stack's write of "y" is refused, and its rerun could
    # write "x" too: what the prefetch read is not used.
    await save(StateStack(store), ["x", "y"], offset=7)
    assert await stack.write(mine) == [False]
    store.asked.clear()
    got = await stack.read(["x"], LAYOUT, prefetch)
    assert store.asked == [["x"]] and got.states.offset.tolist() == [7]


async def test_a_failed_prefetch_leaves_the_read_to_the_batch_and_a_cancelled_one_nothing() -> None:
    store = Asked(failing=1)
    stack = StateStack(store)
    prefetch = stack.prefetch(["z"])
    got = await stack.read(["z"], LAYOUT, prefetch)  # the prefetch failed: read again
    assert store.asked == [["z"], ["z"]] and got.states.offset.tolist() == [-1]
    dropped = stack.prefetch(["w"])
    dropped.cancel()
    assert await dropped.records() == {}
