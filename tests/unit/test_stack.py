"""The states as columns through the writes on their way, the cache and the store
(streamer.state.stack), on the in-memory store."""

from __future__ import annotations

import numpy as np
import pytest

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
