"""One batch of raw Kafka messages through validation and the predictor; no Kafka client here.

The worker's batch loop (:mod:`streamer.kafka.runner`) takes messages off the topic, calls
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
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from streamer import calendar
from streamer.errors import StoreUnavailable
from streamer.model import SequenceModel
from streamer.schemas import DeadLetter, Message, Prediction
from streamer.serve.chain import Chain, Deliver
from streamer.serve.columns import EventColumns, decode_columns
from streamer.serve.outputs import Outputs, encode_outputs
from streamer.serve.predictor import BatchReport, PendingBatch, Predictor, Served

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


#: Times a batch's events whose saves were refused are run again (with a growing pause) before
#: what is still refused is dead-lettered as ``contended``: never dropped.
MAX_RERUNS = 6


@dataclass
class Outcome:
    """A batch's results: its valid events and the outputs to send for them (columns, batch
    order), and its dead letters."""

    events: EventColumns = field(default_factory=EventColumns.empty)
    outputs: Outputs = field(default_factory=Outputs.empty)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    report: BatchReport = field(default_factory=BatchReport)
    retries: int = 0

    @property
    def predictions(self) -> list[Prediction]:
        """The outputs as :class:`Prediction` objects (tests and the Python API)."""
        return self.outputs.predictions(self.events, self.report.shape)

    def encoded(self) -> tuple[list[bytes], list[bytes], list[bytes], list[bytes]]:
        """The keys and values of the step predictions, then of the window predictions."""
        keys, values = encode_outputs(self.events, self.outputs, self.report.shape)
        windows = self.outputs.window
        if not windows.any():
            return keys, values, [], []
        on = windows.tolist()
        return (
            [k for k, w in zip(keys, on, strict=True) if not w],
            [v for v, w in zip(values, on, strict=True) if not w],
            [k for k, w in zip(keys, on, strict=True) if w],
            [v for v, w in zip(values, on, strict=True) if w],
        )


class BatchHandler:
    def __init__(
        self,
        predictor: Predictor,
        *,
        max_event_bytes: int = 64 * 1024,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 5.0,
        max_behind: int = 1,
    ):
        self.predictor = predictor
        self.max_event_bytes = max_event_bytes
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        #: called at every retry during a store outage (the worker counts them in its metrics)
        self.on_retry: Callable[[], None] | None = None
        #: the order of the batches' saves and deliveries
        self.chain: Chain[Outcome] = Chain(max_behind)
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

    def decode(self, messages: Sequence[Message]) -> tuple[EventColumns, list[DeadLetter]]:
        p = self.predictor
        good, bad = decode_columns(messages, p.features, self.max_event_bytes, p.categorical)
        if p.served.spec.calendar and len(good):
            ok = calendar.times_ok(good.ds)
            if not ok.all():  # (the model reads its calendar inputs from ds)
                rows = np.flatnonzero(~ok)
                for r in rows.tolist():
                    m = messages[int(good.source[r])]
                    bad.append(
                        DeadLetter(
                            m.key,
                            m.value,
                            "not_a_time",
                            f"ds {good.ds[r][:100]!r} is not an ISO 8601 time: the model's "
                            "calendar inputs are read from it",
                            m.partition,
                            m.offset,
                        )
                    )
                bad.sort(key=lambda d: (d.partition, d.offset))
                good = good.take(np.flatnonzero(ok))
        return good, bad

    async def handle(
        self, messages: Sequence[Message], committed: Mapping[int, int] | None = None
    ) -> Outcome:
        """Validate, step and save a batch. Waits out store outages; never drops the batch.

        The states are computed once and the same bytes are written until the write goes
        through, so a write whose reply was lost is not mistaken for a replay.
        """
        return await (await self.begin(messages, committed))

    async def begin(
        self,
        messages: Sequence[Message],
        committed: Mapping[int, int] | None = None,
        deliver: Deliver[Outcome] | None = None,
    ) -> asyncio.Future[Outcome]:
        """Validate and step a batch now; save it, then ``deliver`` it, in the background, in
        order (:class:`~streamer.serve.chain.Chain`). Returns the future of its outcome, done
        once it is saved and delivered.

        The next batch can begin while this one is saved: it reads the states being written from
        memory (:meth:`Predictor.prepare`), and its save waits for this one, so saves go to the
        store one at a time, in order. The states of its other entities are read from the store
        while it waits its turn (:meth:`Predictor.prefetch`). A save refused by the store makes
        the batch after it step again from the store's states before it is saved.
        """
        if self._staged is not None:  # (batches in flight keep the model that stepped them)
            old = self.predictor.version
            self.predictor.use(*self._staged)
            self._staged = None
            log.info(
                "switched from model %s to %s at a batch boundary", old, self.predictor.version
            )
        good, bad = self.decode(messages)
        # The states no batch in flight steps are read while those are saved and delivered.
        prefetch = self.predictor.prefetch(good)
        try:
            await self.chain.ready()  # raises the failure of a delivery
        except BaseException:
            prefetch.cancel()
            raise
        outcome = Outcome(events=good, dead_letters=bad)
        pending = await self._retrying(
            outcome, lambda: self.predictor.prepare(good, committed, prefetch=prefetch)
        )
        save = functools.partial(self._save, outcome, messages, good, pending, committed)
        return self.chain.add(save, deliver)

    async def _save(
        self,
        outcome: Outcome,
        messages: Sequence[Message],
        good: EventColumns,
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
            outcome.report = report = await self._retrying(
                outcome, functools.partial(self.predictor.commit, pending)
            )
        except BaseException:
            self.predictor.abandon(pending)
            raise
        parts = [report.outputs]
        conflicts = [report.conflicts]
        # A refused save means the stored state changed under this batch (another writer applied
        # these events first, as when a rebalance races this batch). Run them again: the fence
        # skips what the other writer applied and its kept outputs are re-emitted, so no event
        # is left without a prediction. Refused again and again: wait a little longer each time;
        # what is still refused at the end is dead-lettered, never dropped.
        rejected = report.rejected_entities
        for attempt in range(MAX_RERUNS):
            if not rejected:
                break
            if attempt:
                await asyncio.sleep(self.retry_initial_s * 2 ** (attempt - 1))
            rows = _rows_of(good, rejected)
            again = await self._apply(outcome, good.take(rows), committed, pending.served)
            parts.append(again.outputs.remap(rows))
            conflicts.append(rows[again.conflicts])
            rejected = again.rejected_entities
            report.homes.update(again.homes)
            report.applied += again.applied
            report.skipped += again.skipped
            report.reemitted += again.reemitted
            report.resets += again.resets
            report.rejected += again.rejected
        report.rejected_entities = rejected
        joined = Outputs.join(parts)
        if len(parts) > 1 and len(joined):  # a rerun re-emits what a run before re-emitted
            joined = joined.where(np.r_[True, joined.row[1:] != joined.row[:-1]])
        outcome.outputs = report.outputs = joined
        flagged = np.unique(np.concatenate(conflicts))
        if len(flagged):
            outcome.dead_letters += _dead(
                messages,
                good,
                flagged,
                "partition_conflict",
                "the entity's state belongs to partition {home}; this event came from partition "
                "{partition} (producers with different partitioners?). Set "
                "STREAMER_ON_PARTITION_CHANGE=takeover after recreating or repartitioning a topic",
                report,
            )
        if rejected:
            rows = _rows_of(good, rejected)
            rows = rows[~np.isin(rows, joined.row) & ~np.isin(rows, flagged)]  # (those have one)
            log.error(
                "the states of %d entities kept changing under this worker; %d of this batch's "
                "events are dead-lettered (contended) after %d runs",
                len(rejected),
                len(rows),
                MAX_RERUNS + 1,
            )
            outcome.dead_letters += _dead(
                messages,
                good,
                rows,
                "contended",
                "the entity's stored state kept changing under this worker (another worker "
                "writes it); replay this event once that stops",
                report,
            )
        return outcome

    async def _apply(
        self,
        outcome: Outcome,
        events: EventColumns,
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


def _rows_of(good: EventColumns, entities: Sequence[str]) -> npt.NDArray[np.int64]:
    """The rows of the events of these entities, in batch order."""
    wanted = set(entities)
    mask = np.fromiter((e in wanted for e in good.entities), bool, len(good.entities))
    return np.flatnonzero(mask[good.entity]).astype(np.int64)


def _dead(
    messages: Sequence[Message],
    good: EventColumns,
    rows: npt.NDArray[np.int64],
    reason: str,
    detail: str,
    report: BatchReport,
) -> list[DeadLetter]:
    """Dead letters of valid events (their original bytes), for a reason the predictor found."""
    out = []
    for r in np.sort(rows).tolist():
        m = messages[int(good.source[r])]
        home = report.homes.get(good.entities[int(good.entity[r])], "?")
        text = detail.format(home=home, partition=m.partition)
        out.append(DeadLetter(m.key, m.value, reason, text, m.partition, m.offset))  # type: ignore[arg-type]
    return out
