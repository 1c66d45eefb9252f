"""One batch of raw Kafka messages through validation and the predictor; no Kafka client here.

The worker's batch loop (:mod:`streamer.runner`) takes messages off the topic, calls
:meth:`BatchHandler.begin` (or :meth:`BatchHandler.handle`, which also waits for the save) and sends
what the batch's outcome holds. Bad input becomes dead letters; an unreachable Redis makes the save
wait and retry, with backoff, for as long as it takes: a batch is never dropped, and the offset
fence makes the retry safe.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from streamer.errors import StoreUnavailable
from streamer.model import SequenceModel
from streamer.predictor import BatchReport, PendingBatch, Predictor, Served
from streamer.schemas import DeadLetter, Event, Message, Prediction, decode_batch

__all__ = ["BatchHandler", "Message", "Outcome", "RawMessage"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A :class:`Message` built by hand (tests, replays)."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


@dataclass
class Outcome:
    predictions: list[Prediction] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    report: BatchReport = field(default_factory=BatchReport)
    retries: int = 0


class BatchHandler:
    def __init__(
        self,
        predictor: Predictor,
        *,
        max_event_bytes: int = 64 * 1024,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 5.0,
    ):
        self.predictor = predictor
        self.max_event_bytes = max_event_bytes
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        #: called at every retry during a store outage (the worker counts them in its metrics)
        self.on_retry: Callable[[], None] | None = None
        #: the latest batch's save, and whether its states are final (see :meth:`begin`)
        self._saving: asyncio.Future[Outcome] | None = None
        self._stepped: asyncio.Future[None] | None = None
        #: a model to switch to at the next batch boundary (see :meth:`stage`)
        self._staged: tuple[SequenceModel, str] | None = None

    def stage(self, model: SequenceModel, version: str) -> None:
        """Serve ``model`` from the next batch on: the batch being stepped, and those being
        saved, finish with the model they began with (a hot swap at a batch boundary)."""
        self._staged = (model, version)

    @property
    def serving(self) -> str:
        """The version batches are stepped with from now on (the staged one, if any)."""
        return self._staged[1] if self._staged else self.predictor.version

    def decode(self, messages: Sequence[Message]) -> tuple[list[Event], list[DeadLetter]]:
        return decode_batch(messages, self.predictor.features, self.max_event_bytes)

    async def handle(
        self, messages: Sequence[Message], committed: Mapping[int, int] | None = None
    ) -> Outcome:
        """Validate, step and save a batch. Waits out store outages; never drops the batch.

        The states are computed once and the same bytes are written until the write goes
        through, so a write whose reply was lost is not mistaken for a replay.
        """
        return await (await self.begin(messages, committed))

    async def begin(
        self, messages: Sequence[Message], committed: Mapping[int, int] | None = None
    ) -> asyncio.Future[Outcome]:
        """Validate and step a batch now, save it in the background; returns its outcome's future.

        The next batch can begin while this one is saved: it reads the states being written from
        memory (:meth:`Predictor.prepare`), and its save waits for this one, so saves go to the
        store one at a time, in order. A save refused by the store makes the batch after it step
        again from the store's states; the batch after that begins only once this re-stepping is
        over (``stepped``), so it never steps on from a state that will not hold.
        """
        if self._stepped is not None and self._saving is not None:
            # The batch before has its final states (or its save is over, however it ended).
            either: list[asyncio.Future[Any]] = [self._stepped, self._saving]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if _failed(self._saving):
            self._saving = None  # its caller has its error; start a new chain from the store
        if self._staged is not None:
            old = self.predictor.version
            self.predictor.use(*self._staged)
            self._staged = None
            log.info(
                "switched from model %s to %s at a batch boundary", old, self.predictor.version
            )
        good, bad = self.decode(messages)
        outcome = Outcome(dead_letters=bad)
        pending = await self._retrying(outcome, lambda: self.predictor.prepare(good, committed))
        stepped = asyncio.get_running_loop().create_future()
        saving = asyncio.ensure_future(
            self._save(outcome, good, pending, committed, self._saving, stepped)
        )
        self._saving, self._stepped = saving, stepped
        return saving

    async def _save(
        self,
        outcome: Outcome,
        good: list[Event],
        pending: PendingBatch,
        committed: Mapping[int, int] | None,
        previous: asyncio.Future[Outcome] | None,
        stepped: asyncio.Future[None],
    ) -> Outcome:
        try:
            if previous is not None:
                await asyncio.shield(previous)  # in order; a failed save fails the ones after it
            if self.predictor.is_stale(pending):
                self.predictor.abandon(pending)
                pending = await self._retrying(
                    outcome,
                    functools.partial(self.predictor.prepare, good, committed, pending.served),
                )
        except BaseException:
            self.predictor.abandon(pending)
            raise
        finally:
            stepped.set_result(None)  # every save before this one is over: no more re-stepping
        try:
            outcome.report = await self._retrying(
                outcome, functools.partial(self.predictor.commit, pending)
            )
        except BaseException:
            self.predictor.abandon(pending)
            raise
        predictions = list(outcome.report.predictions)
        # A refused save means another writer applied these events first (a rebalance raced this
        # batch). Run them again: the fence skips them and the winner's kept outputs are re-emitted,
        # so no event is left without a prediction.
        report = outcome.report
        for _ in range(3):
            rejected = set(report.rejected_entities)
            if not rejected:
                break
            again = await self._apply(
                outcome, [e for e in good if e.unique_id in rejected], committed, pending.served
            )
            predictions += again.predictions
            report.rejected_entities = again.rejected_entities
            report.applied += again.applied
            report.skipped += again.skipped
            report.reemitted += again.reemitted
            report.resets += again.resets
            report.rejected += again.rejected
        if report.rejected_entities:
            left = set(report.rejected_entities)
            log.error(
                "the states of %d entities kept changing under this worker; %d of this batch's "
                "events were not applied here and get no prediction from it",
                len(left),
                sum(1 for e in good if e.unique_id in left),
            )
        if len(predictions) != len(outcome.report.predictions):  # back in batch order
            order = {(e.partition, e.offset): i for i, e in enumerate(good)}
            predictions.sort(key=lambda p: order[(p.partition, p.offset)])
        outcome.predictions = predictions
        return outcome

    async def _apply(
        self,
        outcome: Outcome,
        events: list[Event],
        committed: Mapping[int, int] | None,
        served: Served,
    ) -> BatchReport:
        """Step once (with the model that stepped the batch), then write the same bytes until the
        write goes through."""
        pending = await self._retrying(
            outcome, lambda: self.predictor.prepare(events, committed, served)
        )
        return await self._retrying(outcome, lambda: self.predictor.commit(pending))

    async def _retrying(self, outcome: Outcome, attempt: Callable[[], Awaitable[T]]) -> T:
        delay = self.retry_initial_s
        while True:
            try:
                return await attempt()
            except StoreUnavailable as exc:
                outcome.retries += 1
                if self.on_retry is not None:
                    self.on_retry()
                log.warning("state store unavailable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)


def _failed(fut: asyncio.Future[T] | None) -> bool:
    return fut is not None and fut.done() and (fut.cancelled() or fut.exception() is not None)
