"""The order of saves, deliveries and commits (streamer.serve.chain), with saves and deliveries
of controlled durations."""

from __future__ import annotations

import asyncio

import pytest

from streamer.serve.chain import Chain

pytestmark = pytest.mark.asyncio


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def save(self, n: int, seconds: float, fail: bool = False):  # type: ignore[no-untyped-def]
        async def run(previous: asyncio.Future[int] | None, stepped: asyncio.Future[None]) -> int:
            self.events.append(f"step-final {n}")
            stepped.set_result(None)
            if previous is not None:
                await asyncio.shield(previous)
            self.events.append(f"save {n} start")
            await asyncio.sleep(seconds)
            if fail:
                raise ConnectionError(f"save {n} failed")
            self.events.append(f"save {n} end")
            return n

        return run

    def deliver(  # type: ignore[no-untyped-def]
        self, seconds: float, fail_at: int | None = None, send_s: float = 0.0
    ):
        """A delivery: its outputs sent (``send_s``), then acknowledged and committed
        (``seconds``; ``fail_at``: the batch whose commit fails)."""

        async def send(n: int):  # type: ignore[no-untyped-def]
            self.events.append(f"send {n} start")
            await asyncio.sleep(send_s)
            self.events.append(f"send {n} end")

            async def commit() -> None:
                self.events.append(f"deliver {n} start")
                await asyncio.sleep(seconds)
                if n == fail_at:
                    raise RuntimeError(f"deliver {n} failed")
                self.events.append(f"deliver {n} end")

            return commit

        return send


async def test_saves_then_deliveries_go_in_order_however_long_each_takes() -> None:
    log, chain = Log(), Chain[int]()
    ends = []
    for n, (save_s, deliver_s) in enumerate([(0.03, 0.0), (0.0, 0.03), (0.01, 0.0), (0.0, 0.0)]):
        await chain.ready()
        ends.append(chain.add(log.save(n, save_s), log.deliver(deliver_s)))
    assert await asyncio.gather(*ends) == [0, 1, 2, 3]
    saves = [e for e in log.events if e.startswith("save")]
    assert saves == [f"save {n} {w}" for n in range(4) for w in ("start", "end")]
    delivers = [e for e in log.events if e.startswith("deliver")]
    assert delivers == [f"deliver {n} {w}" for n in range(4) for w in ("start", "end")]
    for n in range(4):  # a batch is delivered once saved
        assert log.events.index(f"deliver {n} start") > log.events.index(f"save {n} end")


async def test_the_next_batch_is_stepped_while_the_one_before_is_saved_and_delivered() -> None:
    log, chain = Log(), Chain[int]()
    await chain.ready()
    first = chain.add(log.save(0, 0.05), log.deliver(0.05))
    await chain.ready()  # the first one's states are final: no waiting for its save
    assert not first.done() and "save 0 end" not in log.events
    second = chain.add(log.save(1, 0.0), log.deliver(0.0))
    await chain.ready()  # the third waits until the first is delivered (at most one behind)
    assert first.done() and "deliver 0 end" in log.events
    await asyncio.gather(first, second)


async def test_a_failed_save_is_delivered_by_nothing_after_it_and_stops_the_worker() -> None:
    log, chain = Log(), Chain[int]()
    await chain.ready()
    first = chain.add(log.save(0, 0.01, fail=True), log.deliver(0.0))
    await chain.ready()
    second = chain.add(log.save(1, 0.0), log.deliver(0.0))
    with pytest.raises(ConnectionError):
        await first
    with pytest.raises((ConnectionError, RuntimeError)):
        await second
    assert not [e for e in log.events if e.startswith("deliver")]
    with pytest.raises(ConnectionError):
        chain.raise_failed()
    with pytest.raises(ConnectionError):
        await chain.ready()
    for _ in range(2):  # raised to every caller, again
        with pytest.raises((ConnectionError, RuntimeError)):
            await chain.settle()


async def test_a_failed_delivery_stops_the_deliveries_after_it() -> None:
    log, chain = Log(), Chain[int]()
    ends = []
    for n in range(2):
        await chain.ready()
        ends.append(chain.add(log.save(n, 0.0), log.deliver(0.01, fail_at=0)))
    results = await asyncio.gather(*ends, return_exceptions=True)
    assert isinstance(results[0], RuntimeError) and "deliver 0 failed" in str(results[0])
    assert isinstance(results[1], RuntimeError) and "before was not delivered" in str(results[1])
    assert "deliver 1 start" not in log.events and "save 1 end" in log.events
    with pytest.raises(RuntimeError):
        await chain.ready()


async def test_without_deliveries_a_failed_save_is_its_callers_and_the_next_starts_anew() -> None:
    log, chain = Log(), Chain[int]()
    await chain.ready()
    first = chain.add(log.save(0, 0.0, fail=True))
    with pytest.raises(ConnectionError):
        await first
    await chain.ready()  # not raised again: its caller had it
    assert await chain.add(log.save(1, 0.0)) == 1
    await chain.settle()


async def test_behind_sets_how_many_batches_are_saved_or_delivered_in_the_background() -> None:
    log, chain = Log(), Chain[int](behind=2)
    ends = []
    for n in range(3):
        await chain.ready()
        ends.append(chain.add(log.save(n, 0.0), log.deliver(0.05)))
    assert not ends[0].done()  # two behind the third: the first need not be delivered yet
    await chain.ready()  # a fourth waits for the first
    assert ends[0].done() and not ends[2].done()
    await asyncio.gather(*ends)
    delivers = [e for e in log.events if e.startswith("deliver")]
    assert delivers == [f"deliver {n} {w}" for n in range(3) for w in ("start", "end")]
    with pytest.raises(ValueError):
        Chain[int](behind=0)


async def test_outputs_go_out_in_order_while_the_batch_before_commits() -> None:
    """The outputs of a batch are sent as soon as it is saved and those before it are on their
    way, however long each send takes; its commit still waits for the one before."""
    log, chain = Log(), Chain[int](behind=3)
    ends = []
    for n, send_s in enumerate([0.03, 0.0, 0.01]):
        await chain.ready()
        ends.append(chain.add(log.save(n, 0.0), log.deliver(0.05, send_s=send_s)))
    await asyncio.gather(*ends)
    sends = [e for e in log.events if e.startswith("send")]
    assert sends == [f"send {n} {w}" for n in range(3) for w in ("start", "end")]
    delivers = [e for e in log.events if e.startswith("deliver")]
    assert delivers == [f"deliver {n} {w}" for n in range(3) for w in ("start", "end")]
    ix = log.events.index
    for n in (1, 2):  # sent while the one before commits, committed after it
        assert ix(f"send {n} end") < ix(f"deliver {n - 1} end") < ix(f"deliver {n} start")


async def test_a_failed_commit_commits_nothing_after_it() -> None:
    log, chain = Log(), Chain[int](behind=3)
    ends = []
    for n in range(3):
        await chain.ready()
        ends.append(chain.add(log.save(n, 0.0), log.deliver(0.02, fail_at=0)))
    results = await asyncio.gather(*ends, return_exceptions=True)
    assert isinstance(results[0], RuntimeError) and "deliver 0 failed" in str(results[0])
    for r in results[1:]:
        assert isinstance(r, RuntimeError) and "before was not delivered" in str(r)
    assert not [e for e in log.events if e.startswith(("deliver 1", "deliver 2"))]
    with pytest.raises(RuntimeError):
        await chain.ready()
