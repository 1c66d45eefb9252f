"""The predictor: a batch of events (as columns) in, one prediction per newly applied event out.

Plain Python, numpy and torch; no Kafka. For one batch:

1. read the states of its entities in one store round trip (:mod:`streamer.state`);
2. fence: applied, skipped (a replay) and conflicting events (:mod:`streamer.serve.fence`);
3. step the applied events wave by wave, one batched cell call per wave (:mod:`streamer.serve.step`);
4. save all touched states in one conditional round trip (a state that changed under the batch
   is never overwritten: its events get no prediction from here and are run again);
5. return the outputs: the predictions of saved events, and the kept predictions of skipped ones
   whose offsets were not committed (re-emitted, bit for bit), as columns in batch order. The
   predictions of applied events are kept in the store's outbox, written with the states (or, for
   a store without one, inside the states) until their offsets are committed.

Model/state policy: every state records the version of the model that wrote it. A stored state
whose shape differs from the model's (another cell, layers or hidden size, window length), or
whose bytes cannot be decoded, is reset to zeros (counted in ``resets``). A state written by
another version with the same shape continues under the current model (``on_model_change="keep"``,
the default) or is reset too (``"reset"``). A reset keeps the fence and the kept outputs, so no
event it applied is applied again and none of its predictions is lost.

The served model can change between batches (:meth:`Predictor.use`, a hot swap): a batch is
stepped by one model from start to end, and :class:`PendingBatch` remembers which.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from streamer.errors import ConfigError, StaleBatch, StreamerError
from streamer.model import SequenceModel
from streamer.schemas import Event, Prediction
from streamer.serve import kept
from streamer.serve.columns import EventColumns
from streamer.serve.fence import fence, waves
from streamer.serve.outputs import Outputs, OutputShape
from streamer.serve.step import Served, Stepper, resolve_device
from streamer.state import StateCache, StateStore
from streamer.state.batch import StateBatch, decode_outbox
from streamer.state.codec import Dtype, now_ms
from streamer.state.overlay import InFlight
from streamer.state.stack import Layout, Prefetch, Staged, StateStack
from streamer.state.store import OutboxPart

__all__ = ["BatchReport", "PendingBatch", "Predictor", "Served", "resolve_device"]

log = logging.getLogger("streamer.serve.predictor")
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass
class BatchReport:
    """What happened to one batch, for logs and metrics."""

    events: int = 0
    applied: int = 0
    #: Events at or below the stored offset: already applied before (a replay).
    skipped: int = 0
    #: Skipped events whose kept prediction was sent again (their offsets were not committed).
    reemitted: int = 0
    #: Entities whose save was refused because the stored state changed under this batch.
    rejected: int = 0
    rejected_entities: list[str] = field(default_factory=list)
    #: Entities whose stored state did not fit the model (or the policy) and was reset.
    resets: int = 0
    #: A next-event model's: per categorical column, the applied events whose value its
    #: vocabulary does not hold (null included), stepped with the out-of-vocabulary id.
    out_of_vocabulary: dict[str, int] = field(default_factory=dict)
    #: Rows of events from another partition than their entity's (see :mod:`~.fence`).
    conflicts: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    #: the partition each conflicting event's entity belongs to
    homes: dict[str, int] = field(default_factory=dict)
    #: The batch's valid events and the predictions to send for them (columns, batch order).
    batch: EventColumns = field(default_factory=EventColumns.empty)
    outputs: Outputs = field(default_factory=Outputs.empty)
    #: what the outputs' values are (classes; a forecast's frequency and intervals' levels)
    shape: OutputShape = field(default_factory=OutputShape)
    #: seconds of the store's read and write round trips (None: none was needed), and of the
    #: model's steps
    read_s: float | None = None
    write_s: float | None = None
    step_s: float | None = None

    @property
    def predictions(self) -> list[Prediction]:
        """The outputs as :class:`Prediction` objects (tests and the Python API)."""
        return self.outputs.predictions(self.batch, self.shape)


@dataclass
class PendingBatch:
    """A stepped batch whose states are not saved yet (see :meth:`Predictor.commit`)."""

    report: BatchReport
    served: Served
    events: EventColumns
    #: kept predictions of skipped events, sent again
    reemit: Outputs = field(default_factory=Outputs.empty)
    #: predictions of newly applied events, and the position of each one's entity in ``items``
    fresh: Outputs = field(default_factory=Outputs.empty)
    fresh_slot: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    #: the position among the stepped entities of every newly applied event's entity
    stepped: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    #: the stepped states, encoded, until the store answers (None: no event was applied)
    staged: Staged | None = None
    #: some states were read from writes still on their way (see :meth:`Predictor.is_stale`)
    overlaid: bool = False
    #: its number among the batches in flight, and the count of refused saves when its states
    #: were read (:class:`~streamer.state.overlay.InFlight`)
    batch: int = 0
    refusals: int = 0
    #: a store with an outbox: the predictions of the applied events, per partition, and their
    #: entries (what a replay of this batch's events in flight re-emits)
    outbox: list[OutboxPart] = field(default_factory=list)
    entries: dict[int, np.ndarray] = field(default_factory=dict)


class Predictor:
    """Steps batches of events through a model, with state kept in a :class:`StateStore`."""

    def __init__(
        self,
        model: SequenceModel,
        version: str,
        store: StateStore,
        *,
        device: torch.device | str = "cpu",
        state_dtype: Dtype = "float32",
        max_kept_outputs: int = 1024,
        cache: StateCache | None = None,
        fused_cell_from: int | None = None,
        on_model_change: str = "keep",
        on_partition_change: str = "refuse",
    ):
        self.device = torch.device(device)
        self.served = Served.of(model, version, self.device)
        if on_model_change not in ("keep", "reset"):
            raise ConfigError(f"on_model_change is keep or reset, not {on_model_change!r}")
        if on_partition_change not in ("refuse", "takeover"):
            raise ConfigError(
                f"on_partition_change is refuse or takeover, not {on_partition_change!r}"
            )
        #: what becomes of a state written by another version of the same shape
        self.on_model_change = on_model_change
        #: what becomes of an event from another partition than its entity's (see fence)
        self.takeover = on_partition_change == "takeover"
        #: the states: writes on their way, then the cache, then the store
        self.states = StateStack(store, cache)
        self._trimmed: dict[int, int] = {}  # per partition, the offset last trimmed below
        self.state_dtype: Dtype = state_dtype
        #: Most outputs kept per entity for re-emission (the newest ones).
        self.max_kept_outputs = max_kept_outputs
        self.stepper = Stepper(self.device, fused_cell_from)

    @property
    def store(self) -> StateStore:
        return self.states.store

    @property
    def cache(self) -> StateCache | None:
        return self.states.cache

    @property
    def in_flight(self) -> InFlight:
        """The records being written: the next batch reads an entity's state there first, so it
        can be stepped while the write is on its way."""
        return self.states.in_flight

    @property
    def model(self) -> SequenceModel:
        return self.served.model

    @property
    def version(self) -> str:
        return self.served.version

    @property
    def features(self) -> tuple[str, ...]:
        """The fields an event must carry besides ``unique_id``, ``ds`` and ``y``."""
        return self.served.spec.features

    @property
    def categorical(self) -> tuple[str, ...]:
        """The text fields an event must carry (a next-event model's; then ``y`` is not needed)."""
        return self.served.spec.categorical

    @property
    def staged(self) -> bool:
        """Whether inputs and states go to the device in one packed buffer (on a GPU)."""
        return self.stepper.staged

    @staged.setter
    def staged(self, on: bool) -> None:
        self.stepper.staged = on

    @property
    def fused_cell_from(self) -> int:
        return self.stepper.fused_from

    def use(self, model: SequenceModel, version: str) -> None:
        """Serve another model from the next :meth:`prepare` on (a hot swap; call it between
        batches). Batches prepared before are saved with the model that stepped them."""
        self.served = Served.of(model, version, self.device)

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop cached states of partitions this worker no longer owns."""
        for p in partitions:
            self._trimmed.pop(p, None)
        dropped = self.states.forget_partitions(partitions)
        log.debug("cache: dropped %d states of partitions %s", dropped, sorted(partitions))

    async def step_many(self, events: Sequence[Event] | EventColumns) -> list[Prediction]:
        """Apply the events and return the predictions of those newly applied, in batch order."""
        return (await self.process(events)).predictions

    async def process(
        self, events: Sequence[Event] | EventColumns, committed: Mapping[int, int] | None = None
    ) -> BatchReport:
        """:meth:`prepare` then :meth:`commit`; callers that retry use the two steps directly."""
        pending = await self.prepare(events, committed)
        try:
            return await self.commit(pending)
        except BaseException:
            self.abandon(pending)  # a caller that tries again starts from the store
            raise

    async def prepare(
        self,
        events: Sequence[Event] | EventColumns,
        committed: Mapping[int, int] | None = None,
        served: Served | None = None,
        prefetch: Prefetch | None = None,
    ) -> PendingBatch:
        """Read the states (one round trip) and step the events; nothing is written yet.

        The stepped states are what the next ``prepare`` reads for these entities until
        :meth:`commit` confirms them (or the store refuses them), so batches can be stepped while
        the one before is saved; they must then be committed in the order they were prepared.

        ``committed`` maps a partition to its committed offset (the next one a restarted consumer
        reads): outputs of events below it were delivered and need not be kept any longer.
        ``served``: the model to step with (default: the current one). Safe to call again after a
        failure: it has no effect outside this process. ``prefetch``: the store read
        :meth:`prefetch` started for these events.
        """
        cols = events if isinstance(events, EventColumns) else EventColumns.of(events)
        sv = served or self.served
        spec = sv.spec
        k = spec.served_outputs
        report = BatchReport(events=len(cols), batch=cols, shape=OutputShape.of(spec))
        pending = PendingBatch(
            report=report,
            served=sv,
            events=cols,
            batch=self.states.batch(),
            refusals=self.in_flight.refusals,
        )
        pending.reemit = pending.fresh = report.outputs = Outputs.empty(k)
        if not len(cols):
            return pending
        committed = committed or {}
        entities = cols.entities
        layers, hidden = spec.state_shape
        layout = Layout(
            layers, hidden, sv.kept_width, spec.state_tensors, self.state_dtype, spec.components
        )
        read = await self.states.read(entities, layout, prefetch)
        loaded, problems = read.states, read.problems
        pending.overlaid, report.read_s = read.overlaid, read.read_s
        for j, why in problems.items():
            log.warning("resetting the state of %r: %s", entities[j], why)
        report.resets = len(problems)
        if self.on_model_change == "reset":
            report.resets += self._reset_other_versions(loaded, sv.version, problems)

        distinct = len(entities) == len(cols)  # (the usual batch: many entities, each once)
        f = fence(
            cols.entity,
            cols.partition,
            cols.offset,
            loaded.partition,
            loaded.offset,
            self.takeover,
            distinct,
        )
        report.conflicts = f.conflict
        if len(f.conflict):
            _, first = np.unique(cols.entity, return_index=True)
            for j in np.unique(cols.entity[f.conflict]).tolist():
                stored = int(loaded.partition[j])
                report.homes[entities[j]] = stored if stored >= 0 else int(cols.partition[first[j]])
            log.warning(
                "%d events came from another partition than their entity's state (producers "
                "with different partitioners?); they are dead-lettered (partition_conflict)",
                len(f.conflict),
            )
        if len(f.skipped):
            pending.reemit = await self._reemit(pending, f.skipped, loaded, committed, sv)
        report.skipped = len(f.skipped)
        report.reemitted = len(pending.reemit)
        if not len(f.applied):
            return pending

        w = waves(cols.entity[f.applied], distinct)
        st = loaded.take(w.entities)
        ev = cols.take(f.applied) if len(f.applied) != len(cols) else cols
        pending.stepped = w.slot
        started = time.perf_counter()
        inline = not self.store.outbox  # (else the kept predictions go to the outbox)
        if spec.window:
            sel, values, steps, lengths = self.stepper.windows(sv, ev, w.slot, w.waves, st)
            if inline:
                with_lengths = np.concatenate([values, lengths[:, None].astype(np.float64)], 1)
                kept.keep_in_records(
                    st,
                    loaded,
                    w.entities,
                    w.slot[sel],
                    ev.offset[sel],
                    steps,
                    with_lengths,
                    committed,
                    self.max_kept_outputs,
                )
            rows, slots, window = f.applied[sel], w.slot[sel], lengths
        else:
            if sv.spec.task == "next":
                values, steps, report.out_of_vocabulary = self.stepper.next_events(
                    sv, ev, w.slot, w.waves, st
                )
            else:
                values, steps = self.stepper.step(sv, ev, w.slot, w.waves, st)
            if inline:
                kept.keep_in_records(
                    st,
                    loaded,
                    w.entities,
                    w.slot,
                    ev.offset,
                    steps,
                    values,
                    committed,
                    self.max_kept_outputs,
                )
            rows, slots, window = f.applied, w.slot, np.zeros(len(steps), np.int64)
        pending.fresh = Outputs(rows, steps, values, [sv.version] * len(rows), window)
        pending.fresh_slot = slots
        if not inline:
            pending.outbox, pending.entries = kept.outbox_parts(
                pending.fresh, slots, cols, sv, committed
            )
        report.step_s = time.perf_counter() - started
        st.version[:] = sv.version.encode("ascii")
        st.updated_ms[:] = now_ms()
        pending.staged = self.states.stage(
            pending.batch,
            entities,
            w.entities,
            st,
            read,
            self.state_dtype,
            pending.entries,
            hold=not self.is_stale(pending),  # (a stale batch is stepped again before it is saved)
        )
        return pending

    async def commit(self, pending: PendingBatch) -> BatchReport:
        """Save the stepped states in one conditional round trip; return the report whose
        outputs are those of saved states and the re-emitted ones, in batch order.

        Retrying a commit whose reply was lost is safe: a record already stored counts as saved.
        """
        report = pending.report
        if self.is_stale(pending):
            raise StaleBatch("states it read from unconfirmed writes were refused by the store")
        staged = pending.staged
        saved: list[bool] = []
        if staged is not None and staged.items:
            started = time.perf_counter()
            saved = await self.states.write(staged, pending.outbox)
            report.write_s = time.perf_counter() - started
        took = np.asarray(saved, bool)
        report.rejected = int(len(took) - took.sum())
        if report.rejected and staged is not None:
            report.rejected_entities = [
                e for e, good in zip(staged.entities, saved, strict=True) if not good
            ]
        if report.rejected:
            log.warning(
                "%d states changed in the store under this batch; their events were not applied "
                "here and are run again",
                report.rejected,
            )
            pending.fresh = pending.fresh.where(took[pending.fresh_slot])
            report.applied = int(took[pending.stepped].sum())
        else:
            report.applied = len(pending.stepped)
        report.outputs = (
            Outputs.join([pending.reemit, pending.fresh]) if len(pending.reemit) else pending.fresh
        )
        return report

    def prefetch(self, events: EventColumns) -> Prefetch:
        """Start reading the states of a batch's entities that no batch in flight steps and the
        cache does not hold, before the batch may be stepped (while the batches before it are
        saved); :meth:`prepare` takes it."""
        return self.states.prefetch(events.entities)

    def abandon(self, pending: PendingBatch) -> None:
        """Forget a prepared batch that will not be committed as it is (before preparing it
        again): the next batch must not step on from its states."""
        if pending.staged is not None:
            self.states.abandon(pending.staged)

    async def trim(self, committed: Mapping[int, int]) -> None:
        """Let the store drop the kept predictions of committed events (a worker at rest)."""
        if self.store.outbox and committed:
            await self.store.trim(committed)

    async def trim_at_rest(self, committed: Mapping[int, int]) -> None:
        """:meth:`trim` below the offsets that moved since the last call, so that Redis holds
        only the states of a worker at rest. Best effort: an outage only delays it (the next
        batch's write trims too)."""
        due = {p: o for p, o in committed.items() if self._trimmed.get(p) != o}
        if not due:
            return
        try:
            await self.trim(due)
        except StreamerError as exc:
            log.debug("cannot trim the outbox: %s", exc)
            return
        self._trimmed.update(due)

    def is_stale(self, pending: PendingBatch) -> bool:
        """Whether a prepared batch read a state from a write the store then refused: it must be
        prepared again before it is saved (its steps started from a state that does not hold)."""
        return pending.overlaid and self.states.stale(pending.refusals)

    async def _reemit(
        self,
        pending: PendingBatch,
        skipped: I64,
        loaded: StateBatch,
        committed: Mapping[int, int],
        sv: Served,
    ) -> Outputs:
        """The kept predictions of skipped events whose offsets were not committed: sent again,
        each once, as they were made. From inside the states (a store without an outbox, or
        records written before it), else from the outbox: of batches this worker still has in
        flight (the batch then counts as read from unconfirmed writes), and the store's."""
        cols, k, window = pending.events, sv.spec.served_outputs, bool(sv.spec.window)
        ent, part, off = cols.entity[skipped], cols.partition[skipped], cols.offset[skipped]
        due = (off >= kept.floors(committed, part)) & (loaded.partition[ent] == part)
        skipped, ent, part, off = skipped[due], ent[due], part[due], off[due]
        found, inline = kept.from_records(loaded, skipped, ent, off, k, window)
        parts = [inline]
        if self.store.outbox and not found.all():
            rest = ~found
            skipped, part, off = skipped[rest], part[rest], off[rest]
            for p in np.unique(part).tolist():
                mine = part == p
                held = self.states.in_flight.entries(p)
                if held:
                    pending.overlaid = True
                blobs = await self.store.kept(p, int(off[mine].min()))
                entries = np.concatenate([*held, decode_outbox(blobs, sv.kept_width)])
                parts.append(kept.from_entries(entries, skipped[mine], off[mine], k, window))
        return kept.join(cols, parts, k)

    def _reset_other_versions(
        self, loaded: StateBatch, version: str, problems: Mapping[int, str]
    ) -> int:
        """Start over the states written by another model version (fence and outputs kept)."""
        other = (loaded.version != b"") & (loaded.version != version.encode("ascii"))
        other[list(problems)] = False  # reset already
        if not other.any():
            return 0
        loaded.h[:, other] = 0
        loaded.c[:, other] = 0
        for name in ("step", "count", "mean", "var"):
            getattr(loaded, name)[other] = 0
        return int(other.sum())

    async def aclose(self) -> None:
        await self.states.aclose()
