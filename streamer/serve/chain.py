"""The order of a batch's save, delivery and commit, kept in one place.

A worker steps batch n+1 while batch n is saved, and takes batch n+2 while batch n is delivered and
committed, so that the round trips to Redis and Kafka do not stall it. What must still hold:

1. saves reach the store one at a time, in the order the batches were stepped (each batch steps on
   from the states of the one before, read from memory while they are written);
2. a batch that read a state whose save the store then refused is stepped again before it is
   saved; the batch after it begins only once that is over (it must not step on from states that
   do not hold);
3. a batch's delivery has two parts: its outputs are sent once it is saved and the outputs of the
   batch before it are on their way (so they go out in order), and its offsets are committed once
   its outputs are acknowledged and the batch before it is committed; so commits go in order and
   no offset is committed before the states and outputs of every event below it. The outputs of
   one batch travel while the batch before it commits (two round trips at once, not one after the
   other);
4. a failure stops what comes after: a batch whose save failed is not delivered, nor is any batch
   after it; a batch whose delivery failed commits nothing after it (the outputs of the next one
   may be sent already: they come again, the same, when its events are consumed again, as after
   any crash); the worker raises the failure before it takes another batch (the events are
   consumed again from the last commit, where the offset fence makes the replay exact).

:class:`Chain` holds these rules; :class:`~streamer.serve.pipeline.BatchHandler` hands it each
batch's save and :class:`~streamer.kafka.runner.Runner` each batch's delivery. At most
``behind`` batches (the setting ``batch.max_behind``) are saved or delivered behind the one being
stepped (back-pressure).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["Chain", "Deliver", "Finish"]

T = TypeVar("T")

#: a batch's save: it gets the save it must follow (None: none) and a future to set once its
#: states are final (no more stepping again), and returns the batch's outcome
Save = Callable[["asyncio.Future[T] | None", "asyncio.Future[None]"], Coroutine[Any, Any, T]]
#: the second part of a delivery: wait for the outputs' acknowledgements, then commit
Finish = Callable[[], Awaitable[None]]
#: the first part of a delivery: send a saved batch's outputs; returns the second part
Deliver = Callable[[T], Awaitable[Finish]]


class Chain(Generic[T]):
    """Batches in order through save, then delivery (see the module's rules)."""

    def __init__(self, behind: int = 1) -> None:
        if behind < 1:
            raise ValueError(f"behind is at least 1, not {behind}")
        self.behind = behind
        #: the last batch's save, and whether its states are final
        self._saving: asyncio.Future[T] | None = None
        self._stepped: asyncio.Future[None] | None = None
        #: the last batch's end (saved and delivered), and those of the batches before it
        self._done: asyncio.Future[T] | None = None
        #: set once the last batch's outputs are on their way (or it will send none)
        self._sent: asyncio.Future[None] | None = None
        self._before: deque[asyncio.Future[T]] = deque()
        #: whether the batches in the chain are delivered (a worker) or only saved (tests, the
        #: Python API): a failed delivery stops the chain, a failed save alone does not
        self._delivers = False

    async def ready(self) -> None:
        """Wait until the next batch may be stepped: the one before has its final states (or its
        save is over) and at most ``behind`` batches are behind it. Raises the failure of a
        delivery."""
        while self._before and (len(self._before) >= self.behind or self._before[0].done()):
            before = self._before.popleft()
            await asyncio.wait([before])
            if self._delivers and _failed(before):
                self._before.appendleft(before)  # raised to every caller
                raise before.exception() or RuntimeError("a delivery was cancelled")
        if self._stepped is not None and self._saving is not None:
            either: list[asyncio.Future[Any]] = [self._stepped, self._saving]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if _failed(self._saving):
            self._saving = None  # its caller has its error; the next batch starts from the store

    def add(self, save: Save[T], deliver: Deliver[T] | None = None) -> asyncio.Future[T]:
        """Chain a stepped batch (call :meth:`ready` first): its save runs after the save before
        it; then ``deliver`` sends its outputs after those of the batch before it, and the part it
        returns commits after the batch before it committed. Returns the batch's end: its
        outcome once it is saved and delivered."""
        loop = asyncio.get_running_loop()
        stepped = loop.create_future()
        saving = asyncio.ensure_future(save(self._saving, stepped))
        if deliver is None:
            done: asyncio.Future[T] = saving
        else:
            sent = loop.create_future()
            done = asyncio.ensure_future(
                self._deliver(saving, self._sent, sent, self._done, deliver)
            )
            self._sent = sent
        self._delivers = deliver is not None
        self._saving, self._stepped = saving, stepped
        if self._done is not None:
            self._before.append(self._done)
        self._done = done
        return done

    @staticmethod
    async def _deliver(
        saving: asyncio.Future[T],
        sent_before: asyncio.Future[None] | None,
        sent: asyncio.Future[None],
        previous: asyncio.Future[T] | None,
        deliver: Deliver[T],
    ) -> T:
        try:
            try:
                outcome = await asyncio.shield(saving)
                if sent_before is not None:
                    await asyncio.wait([sent_before])  # outputs go out in the batches' order
                if previous is not None and _failed(previous):
                    raise RuntimeError("the batch before was not delivered")
                finish = await deliver(outcome)
            finally:
                if not sent.done():
                    sent.set_result(None)
        finally:
            if previous is not None:
                await asyncio.wait([previous])  # whatever became of this batch's save
        if previous is not None and _failed(previous):
            raise RuntimeError("the batch before was not delivered") from previous.exception()
        await finish()
        return outcome

    async def settle(self) -> None:
        """Wait for the last batch to be saved and delivered; raise its failure (to every caller:
        a failed batch stays in the chain)."""
        done = self._done
        if done is not None:
            await asyncio.shield(done)  # a cancelled waiter does not cancel the batch
            self._done = None

    def raise_failed(self) -> None:
        """Raise the failure of a delivery that already ended (a fenced producer, a failed save,
        a Kafka error that waiting cannot fix)."""
        if not self._delivers:
            return
        for fut in (*self._before, self._done):
            if fut is not None and fut.done() and not fut.cancelled():
                exc = fut.exception()
                if exc is not None:
                    raise exc


def _failed(fut: asyncio.Future[Any] | None) -> bool:
    return fut is not None and fut.done() and (fut.cancelled() or fut.exception() is not None)
