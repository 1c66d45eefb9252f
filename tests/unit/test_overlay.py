"""The records of batches on their way to the store (streamer.state.overlay)."""

from __future__ import annotations

import numpy as np

from streamer.state.overlay import InFlight


def test_a_batch_reads_the_records_of_the_batch_before_until_the_store_answers() -> None:
    flight = InFlight()
    one, two = flight.batch(), flight.batch()
    a1, b1, a2 = b"a1", b"b1", b"a2"
    flight.hold(one, [("a", a1), ("b", b1)])
    assert flight.get_many(["a", "b", "c"]) == [a1, b1, None]
    flight.hold(two, [("a", a2)])  # the next batch stepped "a" on from a1
    flight.saved(one, [("a", a1), ("b", b1)], [True, True])
    assert flight.get_many(["a", "b"]) == [a2, None]  # a2 is still on its way
    assert flight.refusals == 0 and not flight.stale(0)
    flight.saved(two, [("a", a2)], [True])
    assert len(flight) == 0


def test_a_refused_record_leaves_with_what_was_stepped_on_from_it_and_is_counted() -> None:
    flight = InFlight()
    one, two = flight.batch(), flight.batch()
    flight.hold(one, [("a", b"a1"), ("b", b"b1")])
    flight.hold(two, [("a", b"a2")])
    flight.saved(one, [("a", b"a1"), ("b", b"b1")], [False, True])
    assert flight.get_many(["a", "b"]) == [None, None]
    assert flight.refusals == 1 and flight.stale(0) and not flight.stale(1)


def test_an_abandoned_batch_leaves_but_not_what_a_later_batch_stepped() -> None:
    flight = InFlight()
    one, two = flight.batch(), flight.batch()
    entries = {3: np.zeros(2, [("offset", "<i8")])}
    flight.hold(one, [("a", b"a1"), ("b", b"b1")], entries)
    assert [len(e) for e in flight.entries(3)] == [2] and flight.entries(4) == []
    flight.hold(two, [("a", b"a2")])
    flight.abandon(one, [("a", b"a1"), ("b", b"b1")])
    assert flight.get_many(["a", "b"]) == [b"a2", None]
    assert flight.entries(3) == [] and flight.refusals == 0
