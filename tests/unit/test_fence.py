"""The fence and the waves as array operations, against the event-by-event rules they replace."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.serve import kept
from streamer.serve.fence import _sequential, fence, waves
from streamer.state.batch import outbox_dtype


@st.composite
def batches(draw: st.DrawFn, one_partition: bool) -> tuple:  # type: ignore[type-arg]
    u = draw(st.integers(1, 6))
    stored_p = np.array(draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=u, max_size=u)))
    stored_o = np.where(stored_p >= 0, draw(st.integers(0, 5)), -1)
    home = np.where(stored_p >= 0, stored_p, draw(st.sampled_from([0, 1])))
    n = draw(st.integers(0, 25))
    entity = np.array(draw(st.lists(st.integers(0, u - 1), min_size=n, max_size=n)), np.int64)
    if one_partition:
        partition = home[entity]
    else:
        partition = np.array(draw(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n)))
    # offsets mostly rising per entity, with replays and duplicates
    offset = np.array(draw(st.lists(st.integers(0, 12), min_size=n, max_size=n)), np.int64)
    return entity, partition.astype(np.int64), offset, stored_p.astype(np.int64), stored_o


@settings(max_examples=500, deadline=None)
@given(b=batches(one_partition=True))
def test_every_entity_on_its_home_partition_is_fenced_as_event_by_event(b: tuple) -> None:  # type: ignore[type-arg]
    entity, partition, offset, sp, so = b
    # an entity without a state takes the partition of its first event; give it only that one
    f = fence(entity, partition, offset, sp, so)
    seq = _sequential(entity, partition, offset, sp, so)
    assert f.applied.tolist() == seq.applied.tolist()
    assert f.skipped.tolist() == seq.skipped.tolist()
    assert not len(f.conflict)
    if len(set(entity.tolist())) == len(entity):  # the shortcut for batches of distinct entities
        d = fence(entity, partition, offset, sp, so, distinct=True)
        assert (d.applied.tolist(), d.skipped.tolist()) == (f.applied.tolist(), f.skipped.tolist())


@settings(max_examples=500, deadline=None)
@given(b=batches(one_partition=False))
def test_events_off_their_entitys_partition_are_conflicts_and_the_rest_is_fenced(b: tuple) -> None:  # type: ignore[type-arg]
    entity, partition, offset, sp, so = b
    f = fence(entity, partition, offset, sp, so)
    if len(set(entity.tolist())) == len(entity):
        d = fence(entity, partition, offset, sp, so, distinct=True)
        assert [x.tolist() for x in (d.applied, d.skipped, d.conflict)] == [
            x.tolist() for x in (f.applied, f.skipped, f.conflict)
        ]
    rows = np.sort(np.concatenate([f.applied, f.skipped, f.conflict]))
    assert rows.tolist() == list(range(len(entity)))
    for r in f.conflict.tolist():
        j = entity[r]
        first = partition[np.flatnonzero(entity == j)[0]]
        assert partition[r] != (sp[j] if sp[j] >= 0 else first)
    # without the conflicts, the rest is fenced as event by event
    keep = np.setdiff1d(np.arange(len(entity)), f.conflict)
    seq = _sequential(entity[keep], partition[keep], offset[keep], sp, so)
    assert keep[seq.applied].tolist() == f.applied.tolist()
    # a takeover applies events of other partitions in batch order, as the worker always did
    t = fence(entity, partition, offset, sp, so, takeover=True)
    assert not len(t.conflict)
    assert t.applied.tolist() == _sequential(entity, partition, offset, sp, so).applied.tolist()


@settings(max_examples=300, deadline=None)
@given(entity=st.lists(st.integers(0, 9), max_size=40))
def test_waves_step_each_entity_once_per_wave_in_order(entity: list[int]) -> None:
    e = np.array(entity, np.int64)
    w = waves(e)
    assert w.entities[w.slot].tolist() == entity
    seen = np.concatenate(w.waves) if w.waves else np.zeros(0, np.int64)
    assert sorted(seen.tolist()) == list(range(len(entity)))
    for k, wave in enumerate(w.waves):
        assert len(set(w.slot[wave].tolist())) == len(wave)  # no entity twice in a wave
        for i in wave.tolist():  # the k-th event of its entity
            assert int((e[:i] == e[i]).sum()) == k
    if len(set(entity)) == len(entity):
        assert w.slot.tolist() == list(range(len(entity)))
        d = waves(e, distinct=True)
        assert d.entities.tolist() == entity and d.slot.tolist() == w.slot.tolist()


def test_outbox_entries_of_other_events_only_re_emit_nothing() -> None:
    """Entries held for other offsets (another batch's, in flight) find none of these events."""
    entries = np.zeros(3, outbox_dtype(4))
    entries["offset"] = [10, 11, 12]
    entries["values"] = 1.0
    found = kept.from_entries(entries, np.array([0, 1]), np.array([3, 13]), 3, window=False)
    assert len(found.rows) == 0 and found.values.shape == (0, 3)
    found = kept.from_entries(entries, np.array([0, 1]), np.array([3, 11]), 3, window=False)
    assert found.rows.tolist() == [1] and found.values.tolist() == [[1.0, 1.0, 1.0]]
