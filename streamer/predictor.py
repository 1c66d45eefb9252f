"""The predictor: a batch of events in, one prediction per newly applied event out.

Plain Python and torch; no Kafka. For one batch:

1. group the events by entity (waves keep each entity's order, see :mod:`streamer.batching`);
2. load the states of all its entities in one store round trip;
3. fence: drop events whose (partition, offset) the stored state (or this batch) already applied;
4. scale, then step each wave with one batched cell call on the device;
5. save all touched states in one conditional round trip (a newer stored state always wins);
6. return the predictions of the saved events, in batch order.

Model/state policy: every state records the version of the model that wrote it. A stored state whose
shape differs from the model's (another cell, layers or hidden size, window length), or whose bytes
cannot be decoded, is reset to zeros (counted in ``resets``). A state written by another version
with the same shape continues under the current model (``on_model_change="keep"``, the default) or
is reset too (``"reset"``). A reset keeps the fence and the kept outputs, so no event it applied is
applied again and none of its predictions is lost.

The served model can change between batches (:meth:`Predictor.use`, a hot swap): a batch is
stepped by one model from start to end, and :class:`PendingBatch` remembers which.

A *window* model (``spec.window`` events) keeps a per-entity buffer of the open window's inputs in
the state instead of a hidden state; the event that closes a window (the window is full, or the
end-marker feature is non-zero) gets the window's prediction, the others none.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from streamer import scaling
from streamer.batching import plan_waves
from streamer.errors import ConfigError, StaleBatch
from streamer.model import ModelSpec, SequenceModel
from streamer.schemas import Event, Prediction
from streamer.state import StateStore, base_of
from streamer.state.cache import StateCache
from streamer.state.codec import Dtype, StateBatch, decode_many, encode_many, group_ranks, now_ms

__all__ = ["BatchReport", "PendingBatch", "Predictor", "Served", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when there is one, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but torch sees no CUDA device")
    return torch.device(name)


@dataclass(frozen=True, eq=False)
class Served:
    """A model as the predictor serves it, with what every batch needs of its spec."""

    model: SequenceModel
    version: str
    fmean: npt.NDArray[np.float64]  # (F,) of the input features
    fstd: npt.NDArray[np.float64]
    #: columns of the event features that are model inputs, and of the window end marker
    inputs: npt.NDArray[np.int64]
    end: int | None

    @classmethod
    def of(cls, model: SequenceModel, version: str, device: torch.device) -> Served:
        if len(version.encode("ascii")) > 16:
            raise ConfigError(f"model version {version!r} is longer than 16 ASCII characters")
        spec = model.spec
        nf = len(spec.features)
        mean = np.asarray(spec.feature_mean or [0.0] * nf, np.float64)
        std = np.asarray(spec.feature_std or [1.0] * nf, np.float64)
        inputs = np.asarray(
            [i for i, f in enumerate(spec.features) if f != spec.window_end], np.int64
        )
        end = spec.features.index(spec.window_end) if spec.window_end else None
        return cls(model.eval().to(device), version, mean[inputs], std[inputs], inputs, end)

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def kept_width(self) -> int:
        """Values per kept output: the prediction's, and a window's length for window models."""
        return self.spec.outputs + (1 if self.spec.window else 0)


@dataclass
class BatchReport:
    """What happened to one batch, for logs and metrics."""

    events: int = 0
    applied: int = 0
    #: Events at or below the stored offset: already applied before (a replay).
    skipped: int = 0
    #: Skipped events whose kept prediction was sent again (their offsets were not committed).
    reemitted: int = 0
    #: Entities whose save was refused because a newer state was stored meanwhile.
    rejected: int = 0
    rejected_entities: list[str] = field(default_factory=list)
    #: Entities whose stored state did not fit the model (or the policy) and was reset.
    resets: int = 0
    predictions: list[Prediction] = field(default_factory=list)
    #: seconds of the store's read and write round trips (None: none was needed), and of the
    #: model's steps
    read_s: float | None = None
    write_s: float | None = None
    step_s: float | None = None


@dataclass
class PendingBatch:
    """A stepped batch whose states are not saved yet (see :meth:`Predictor.commit`)."""

    report: BatchReport
    served: Served
    events: Sequence[Event] = ()
    #: batch index -> prediction kept in the state and sent again
    reemit: dict[int, Prediction] = field(default_factory=dict)
    #: batch index -> (entity slot, prediction) of the newly applied events that have one
    fresh: dict[int, tuple[int, Prediction]] = field(default_factory=dict)
    #: entity slot of every newly applied event
    stepped: list[int] = field(default_factory=list)
    #: encoded states to save, one per entity slot
    items: list[tuple[str, bytes]] = field(default_factory=list)
    #: what the store knows each state stepped from by (:func:`streamer.state.base_of`)
    bases: list[bytes] = field(default_factory=list)
    #: partition of each saved state's events, one per entity slot (for the cache)
    partitions: list[int] = field(default_factory=list)
    #: some states were read from writes still on their way (see :meth:`Predictor.is_stale`)
    overlaid: bool = False
    #: the predictor's count of refused saves when the states were read
    refusals: int = 0


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
    ):
        self.device = torch.device(device)
        self.served = Served.of(model, version, self.device)
        if on_model_change not in ("keep", "reset"):
            raise ConfigError(f"on_model_change is keep or reset, not {on_model_change!r}")
        #: what becomes of a state written by another version of the same shape
        self.on_model_change = on_model_change
        self.store = store
        self.state_dtype: Dtype = state_dtype
        #: Most outputs kept per entity for re-emission (the newest ones).
        self.max_kept_outputs = max_kept_outputs
        self.cache = cache
        #: records being written: the next batch reads an entity's state here first, so it can
        #: be stepped while the write is on its way
        self._unconfirmed: dict[str, bytes] = {}
        #: saves refused so far; a batch read from unconfirmed records before a refusal is stale
        self._refusals = 0
        #: Waves of at least this many events run the fused sequence kernel (0: never, the
        #: default). One cell call per layer was faster on both: on an H200 at every batch size
        #: from 1k to 64k (4.4M against 3.7M entity-steps/s at 1k, 145M against 7.6M at 64k:
        #: cuDNN's sequence kernel pays a fixed cost per call), on CPU as fast or faster from
        #: 64 to 2048 with one thread (``bench/gpu_check.py`` measures both).
        self.fused_cell_from = fused_cell_from or 0
        #: On a GPU, inputs and states go over in one pinned buffer and come back in one copy.
        self.staged = self.device.type != "cpu"
        #: the pinned host buffer of the copy to the device, kept from batch to batch (pinning
        #: memory is a slow driver call) and grown when a batch needs more
        self._pinned: torch.Tensor | None = None

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

    def use(self, model: SequenceModel, version: str) -> None:
        """Serve another model from the next :meth:`prepare` on (a hot swap; call it between
        batches). Batches prepared before are saved with the model that stepped them."""
        self.served = Served.of(model, version, self.device)

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop cached states of partitions this worker no longer owns."""
        if self.cache is not None:
            dropped = self.cache.drop_partitions(partitions)
            log.debug("cache: dropped %d states of partitions %s", dropped, sorted(partitions))

    async def step_many(self, events: Sequence[Event]) -> list[Prediction]:
        """Apply the events and return the predictions of those newly applied, in batch order."""
        return (await self.process(events)).predictions

    async def process(
        self, events: Sequence[Event], committed: Mapping[int, int] | None = None
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
        events: Sequence[Event],
        committed: Mapping[int, int] | None = None,
        served: Served | None = None,
    ) -> PendingBatch:
        """Read the states (one round trip) and step the events; nothing is written yet.

        The stepped states are what the next ``prepare`` reads for these entities until
        :meth:`commit` confirms them (or the store refuses them), so batches can be stepped while
        the one before is saved; they must then be committed in the order they were prepared.

        ``committed`` maps a partition to its committed offset (the next one a restarted consumer
        reads): outputs of events below it were delivered and need not be kept any longer.
        ``served``: the model to step with (default: the current one). Safe to call again after a
        failure: it has no effect outside this process.
        """
        sv = served or self.served
        spec = sv.spec
        pending = PendingBatch(
            report=BatchReport(events=len(events)),
            served=sv,
            events=events,
            refusals=self._refusals,
        )
        if not events:
            return pending
        committed = committed or {}
        slot_of: dict[str, int] = {}
        ev_slot = [slot_of.setdefault(e.unique_id, len(slot_of)) for e in events]
        entities = list(slot_of)
        raws, pending.overlaid, pending.report.read_s = await self._read(entities)
        rows_, width = spec.state_shape
        loaded, problems = decode_many(
            raws, rows_, width, sv.kept_width, self.state_dtype, spec.state_tensors
        )
        for j, why in problems.items():
            log.warning("resetting the state of %r: %s", entities[j], why)
        pending.report.resets = len(problems)
        if self.on_model_change == "reset":
            pending.report.resets += self._reset_other_versions(loaded, sv.version, problems)

        # Fence: skip an event at or below the last applied offset of its entity's partition:
        # the stored one, or an earlier event of this batch (a rebalance can deliver one twice).
        last_part, last_off = loaded.partition.tolist(), loaded.offset.tolist()
        applied: list[int] = []
        skipped: list[int] = []
        for i, (ev, j) in enumerate(zip(events, ev_slot, strict=True)):
            if ev.partition == last_part[j] and ev.offset <= last_off[j]:
                skipped.append(i)
            else:
                last_part[j], last_off[j] = ev.partition, ev.offset
                applied.append(i)
        if skipped:
            self._reemit(pending, loaded, [(i, ev_slot[i]) for i in skipped], committed, sv)
        pending.report.skipped = len(skipped)
        if not applied:
            return pending

        plan = plan_waves([ev_slot[i] for i in applied])
        rows = np.asarray(plan.entities, np.int64)  # slot in ``loaded`` of each stepped entity
        st = loaded.take(rows)
        evs = [events[i] for i in applied]
        offsets = np.fromiter((e.offset for e in evs), np.int64, len(evs))
        v, classes, slot = sv.version, spec.classes, plan.slot
        pending.stepped = slot.tolist()
        started = time.perf_counter()
        if spec.window:
            sel, values, steps, lengths = self._step_windows(sv, evs, offsets, slot, plan.waves, st)
            kept = np.concatenate([values, lengths[:, None].astype(np.float64)], axis=1)
            self._keep_outputs(st, loaded, rows, slot[sel], offsets[sel], steps, kept, committed)
            pending.fresh = {
                applied[q]: (
                    int(slot[q]),
                    Prediction.of(evs[q], v, n, f, classes, ln),
                )
                for q, n, f, ln in zip(
                    sel.tolist(), steps.tolist(), values.tolist(), lengths.tolist(), strict=True
                )
            }
        else:
            values, steps = self._step(sv, evs, offsets, slot, plan.waves, st)
            self._keep_outputs(st, loaded, rows, slot, offsets, steps, values, committed)
            pending.fresh = {
                i: (j, Prediction(e.unique_id, e.ds, e.y, e.partition, e.offset, v, n, f, classes))
                for i, e, j, n, f in zip(
                    applied,
                    evs,
                    pending.stepped,
                    steps.tolist(),
                    map(tuple, values.tolist()),
                    strict=True,
                )
            }
        pending.report.step_s = time.perf_counter() - started
        st.version[:] = v.encode("ascii")
        st.updated_ms[:] = now_ms()
        blobs = encode_many(st, self.state_dtype)
        rows_list = rows.tolist()
        pending.items = [(entities[j], b) for j, b in zip(rows_list, blobs, strict=True)]
        pending.bases = [base_of(raws[j]) for j in rows_list]
        pending.partitions = st.partition.tolist()
        if not self.is_stale(pending):  # (a stale batch is stepped again before it is saved)
            self._unconfirmed.update(pending.items)  # the next batch steps on from these
        return pending

    async def commit(self, pending: PendingBatch) -> BatchReport:
        """Save the stepped states in one conditional round trip; return the predictions: those
        of saved states and the re-emitted ones, in batch order.

        Retrying a commit whose reply was lost is safe: a record already stored counts as saved.
        """
        report = pending.report
        if self.is_stale(pending):
            raise StaleBatch("states it read from unconfirmed writes were refused by the store")
        saved: list[bool] = []
        if pending.items:
            started = time.perf_counter()
            saved = await self.store.put_many(pending.items, pending.bases)
            report.write_s = time.perf_counter() - started
        unconfirmed = self._unconfirmed
        for (e, blob), ok in zip(pending.items, saved, strict=True):
            if not ok:  # whatever a later batch stepped on from it does not hold either
                unconfirmed.pop(e, None)
            elif unconfirmed.get(e) is blob:  # (a later batch may have stepped on from it)
                del unconfirmed[e]
        report.rejected = saved.count(False)
        if report.rejected:
            self._refusals += 1
        report.rejected_entities = [
            e for (e, _), ok in zip(pending.items, saved, strict=True) if not ok
        ]
        if self.cache is not None:
            self.cache.put_many(
                (e, part, blob)
                for (e, blob), part, ok in zip(
                    pending.items, pending.partitions, saved, strict=True
                )
                if ok
            )
            self.cache.discard(report.rejected_entities)
        if report.rejected:
            log.warning(
                "%d states were newer in the store; their events were not applied here",
                report.rejected,
            )
        if not pending.reemit and not report.rejected:  # the usual batch: every event applied
            report.applied = len(pending.stepped)
            report.predictions = [pred for _, pred in pending.fresh.values()]
            return report
        out: list[Prediction] = []
        for i in range(len(pending.events)):
            if i in pending.reemit:
                out.append(pending.reemit[i])
            elif i in pending.fresh:
                j, pred = pending.fresh[i]
                if saved[j]:
                    out.append(pred)
        report.applied = sum(1 for j in pending.stepped if saved[j])
        report.predictions = out
        return report

    def abandon(self, pending: PendingBatch) -> None:
        """Forget a prepared batch that will not be committed as it is (before preparing it
        again): the next batch must not step on from its states."""
        for e, blob in pending.items:
            if self._unconfirmed.get(e) is blob:
                del self._unconfirmed[e]

    def is_stale(self, pending: PendingBatch) -> bool:
        """Whether a prepared batch read a state from a write the store then refused: it must be
        prepared again before it is saved (its steps started from a state that does not hold)."""
        return pending.overlaid and pending.refusals != self._refusals

    async def _read(self, entities: list[str]) -> tuple[list[bytes | None], bool, float | None]:
        """The latest records: from writes on their way, then the cache, the rest in one round
        trip to the store; whether any came from a write on its way; the round trip's seconds."""
        over = self._unconfirmed
        raws: list[bytes | None] = (
            [over.get(e) for e in entities] if over else [None] * len(entities)
        )
        overlaid = len(raws) != raws.count(None)
        missed = [j for j, raw in enumerate(raws) if raw is None]
        if self.cache is not None and missed:
            hits = self.cache.get_many([entities[j] for j in missed])
            for j, raw in zip(missed, hits, strict=True):
                raws[j] = raw
            missed = [j for j, raw in zip(missed, hits, strict=True) if raw is None]
        if not missed:
            return raws, overlaid, None
        started = time.perf_counter()
        got = await self.store.get_many([entities[j] for j in missed])
        took = time.perf_counter() - started
        for j, raw in zip(missed, got, strict=True):
            raws[j] = raw
        return raws, overlaid, took

    def _reemit(
        self,
        pending: PendingBatch,
        loaded: StateBatch,
        skipped: list[tuple[int, int]],
        committed: Mapping[int, int],
        sv: Served,
    ) -> None:
        """Send again the kept predictions of skipped events whose offsets were not committed."""
        k, window = sv.spec.outputs, bool(sv.spec.window)
        kept = {
            (j, off): m
            for m, (j, off) in enumerate(
                zip(loaded.out_entity.tolist(), loaded.out_offset.tolist(), strict=True)
            )
        }
        events = pending.events
        seen: set[tuple[int, int]] = set()
        for i, j in skipped:
            ev = events[i]
            if ev.offset < committed.get(ev.partition, -1):
                continue  # committed: its output was delivered, in a committed transaction too
            m = kept.get((j, ev.offset))
            if (
                m is None
                or loaded.partition[j] != ev.partition
                or (ev.partition, ev.offset) in seen
            ):
                continue
            seen.add((ev.partition, ev.offset))
            row = loaded.out_forecast[m].tolist()
            pending.reemit[i] = Prediction.of(
                ev,
                loaded.version[j].decode("ascii", errors="replace"),
                int(loaded.out_step[m]),
                row[:k],
                sv.spec.classes,
                int(row[k]) if window else 0,
            )
        pending.report.reemitted = len(pending.reemit)

    def _keep_outputs(
        self,
        st: StateBatch,
        loaded: StateBatch,
        rows: npt.NDArray[np.int64],
        slot: npt.NDArray[np.int64],
        offsets: npt.NDArray[np.int64],
        steps: npt.NDArray[np.int64],
        forecasts: npt.NDArray[np.float64],
        committed: Mapping[int, int],
    ) -> None:
        """The outputs each saved state keeps: the older ones not committed yet, then this
        batch's, the newest ``max_kept_outputs`` of them."""
        ent, off, stp, fc = slot, offsets, steps, forecasts
        if len(loaded.out_entity):
            where = np.full(len(loaded), -1, np.int64)
            where[rows] = np.arange(len(rows))
            owner = where[loaded.out_entity]  # the old outputs' entity in ``st``, -1 if not stepped
            part = loaded.partition[loaded.out_entity]
            floor = np.fromiter((committed.get(p, -1) for p in part.tolist()), np.int64, len(part))
            old = (owner >= 0) & (part == st.partition[np.maximum(owner, 0)])
            old &= loaded.out_offset >= floor
            if old.any():
                ent = np.concatenate([owner[old], slot])
                off = np.concatenate([loaded.out_offset[old], offsets])
                stp = np.concatenate([loaded.out_step[old], steps])
                fc = np.concatenate([loaded.out_forecast[old], forecasts])
        st.set_outputs(ent, off, stp, fc)
        n = np.bincount(st.out_entity, minlength=len(st))
        cap = self.max_kept_outputs
        if n.max(initial=0) > cap:
            e = st.out_entity
            keep = group_ranks(e) >= n[e] - cap
            st.out_entity, st.out_offset = e[keep], st.out_offset[keep]
            st.out_step, st.out_forecast = st.out_step[keep], st.out_forecast[keep]

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

    def _inputs(
        self, sv: Served, events: Sequence[Event], y: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64] | None]:
        """Model inputs ``(N, I)`` with y unscaled in column 0, and the raw features ``(N, F)``."""
        x = np.empty((len(events), sv.spec.input_size), np.float32)
        x[:, 0] = y
        if not sv.spec.features:
            return x, None
        feats = np.asarray([e.features for e in events], np.float64)
        x[:, 1:] = (feats[:, sv.inputs] - sv.fmean) / sv.fstd
        return x, feats

    @staticmethod
    def _advance(
        events: Sequence[Event],
        ev_off: npt.NDArray[np.int64],
        slot: npt.NDArray[np.int64],
        waves: list[npt.NDArray[np.int64]],
        st: StateBatch,
    ) -> npt.NDArray[np.int64]:
        """Count the events into their states' steps and move the fences to them (``st`` in
        place, wave by wave); return each event's step."""
        steps = np.empty(len(events), np.int64)
        ev_part = np.fromiter((e.partition for e in events), np.int64, len(events))
        for w in waves:
            s = slot[w]
            st.step[s] += 1
            steps[w] = st.step[s]
            st.partition[s], st.offset[s] = ev_part[w], ev_off[w]
        return steps

    def _step(
        self,
        sv: Served,
        events: Sequence[Event],
        ev_off: npt.NDArray[np.int64],
        slot: npt.NDArray[np.int64],
        waves: list[npt.NDArray[np.int64]],
        st: StateBatch,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """Advance the states ``st`` (in place) through the events (at offsets ``ev_off``);
        return the predictions' values (forecasts, or class probabilities) and steps."""
        n = len(events)
        y = np.fromiter((e.y for e in events), np.float64, n)
        mean_e, scale_e = np.empty(n), np.empty(n)
        steps = self._advance(events, ev_off, slot, waves, st)
        for w in waves:  # scaling statistics advance in event order, per entity
            s = slot[w]
            stats = scaling.update((st.count[s], st.mean[s], st.var[s]), y[w])
            st.count[s], st.mean[s], st.var[s] = stats
            mean_e[w], scale_e[w] = stats[1], scaling.scale_of(stats)

        x_host, _ = self._inputs(sv, events, y)  # (N, I)
        if sv.spec.scaling == "entity":
            x_host[:, 0] = (y - mean_e) / scale_e

        order = np.concatenate(waves)
        bounds = np.cumsum([0, *(len(w) for w in waves)]).tolist()
        h, c, x = self._to_device(st.h, st.c, x_host)  # (L, U, H), (L, U, H), (N, I)
        dev = self.device
        order_d = torch.from_numpy(order).to(dev, non_blocking=True)
        slot_d = torch.from_numpy(slot[order]).to(dev, non_blocking=True)
        model = sv.model
        out = torch.empty((n, sv.spec.outputs), device=dev)  # (N, K)
        with torch.inference_mode():
            if len(waves) == 1:  # every entity once, in slot order: no gather, no scatter
                out, (h, c) = model.step(x, (h, c), self._fused(n))
            for a, b in itertools.pairwise(bounds if len(waves) > 1 else ()):
                ev, ent = order_d[a:b], slot_d[a:b]
                state = (h[:, ent], c[:, ent])
                yk, (hk, ck) = model.step(x[ev], state, self._fused(b - a))  # (B, K), (L,B,H)
                h[:, ent], c[:, ent], out[ev] = hk, ck, yk
            out = model.serve(out)
        st.h[...], st.c[...], raw = self._to_host(h, c, out)
        values = raw.astype(np.float64)
        if sv.spec.task == "forecast" and sv.spec.scaling == "entity":
            values = values * scale_e[:, None] + mean_e[:, None]
        return values, steps

    def _step_windows(
        self,
        sv: Served,
        events: Sequence[Event],
        ev_off: npt.NDArray[np.int64],
        slot: npt.NDArray[np.int64],
        waves: list[npt.NDArray[np.int64]],
        st: StateBatch,
    ) -> tuple[
        npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64]
    ]:
        """Add the events to their entities' open windows (``st`` in place) and score the windows
        they close. Returns the closing events' indices, their predictions' values, steps and
        window lengths.

        A window state is one row: the raw inputs of the open window's events, ``window`` x I
        values; its ``count``, ``mean`` and ``var`` are the plain statistics of the open window's
        y (``spec.scaling="entity"`` scales a closed window's y by them, as training does).
        """
        spec = sv.spec
        n, size, width = len(events), spec.window, spec.input_size
        y = np.fromiter((e.y for e in events), np.float64, n)
        x, feats = self._inputs(sv, events, y)
        ends = feats[:, sv.end] != 0 if feats is not None and sv.end is not None else None
        steps = self._advance(events, ev_off, slot, waves, st)
        buf = st.h[0].reshape(len(st), size, width)  # a view: writes go to ``st``
        closing: list[int] = []
        windows: list[npt.NDArray[np.float32]] = []
        for w in waves:  # in event order, per entity
            s = slot[w]
            fill = np.minimum(st.count[s].astype(np.int64), size - 1)
            buf[s, fill] = x[w]
            stats = scaling.update((st.count[s], st.mean[s], st.var[s]), y[w], alpha=0.0)
            st.count[s], st.mean[s], st.var[s] = stats
            done = fill + 1 >= size
            if ends is not None:
                done |= ends[w]
            if not done.any():
                continue
            mean, scale = stats[1][done], scaling.scale_of(stats)[done]
            for e, j, length, mu, sd in zip(
                w[done].tolist(),
                s[done].tolist(),
                (fill[done] + 1).tolist(),
                mean.tolist(),
                scale.tolist(),
                strict=True,
            ):
                win = buf[j, :length].copy()
                if spec.scaling == "entity":
                    win[:, 0] = (win[:, 0] - mu) / sd
                closing.append(e)
                windows.append(win)
            shut = s[done]
            buf[shut] = 0
            st.count[shut], st.mean[shut], st.var[shut] = 0.0, 0.0, 0.0
        sel = np.asarray(closing, np.int64)
        lengths = np.fromiter(map(len, windows), np.int64, len(windows))
        values = np.empty((len(windows), spec.outputs))
        with torch.inference_mode():
            for length in np.unique(lengths).tolist():  # one call per window length
                at = np.flatnonzero(lengths == length)
                xw = torch.from_numpy(np.stack([windows[a] for a in at])).to(self.device)
                values[at] = sv.model.serve(sv.model.window_logits(xw)).cpu().numpy()
        return sel, values, steps[sel], lengths

    async def aclose(self) -> None:
        await self.store.aclose()

    def _fused(self, batch: int) -> bool:
        return 0 < self.fused_cell_from <= batch

    def _to_device(
        self, h: npt.NDArray[np.float32], c: npt.NDArray[np.float32], x: npt.NDArray[np.float32]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """States and inputs on the device: on CPU as views of the arrays; on a GPU packed into one
        pinned host buffer and moved in one asynchronous copy."""
        if not self.staged:
            return torch.from_numpy(h), torch.from_numpy(c), torch.from_numpy(x)
        size = h.size + c.size + x.size
        if self._pinned is None or self._pinned.numel() < size:
            # (the copy from it of the batch before is over: that batch synced in _to_host)
            self._pinned = torch.empty(
                max(size, 2 * (0 if self._pinned is None else self._pinned.numel())),
                dtype=torch.float32,
                pin_memory=self.device.type == "cuda",
            )
        host = self._pinned[:size]
        flat = host.numpy()
        flat[: h.size] = h.ravel()
        flat[h.size : h.size + c.size] = c.ravel()
        flat[h.size + c.size :] = x.ravel()
        dev = host.to(self.device, non_blocking=True)
        return (
            dev[: h.size].view(h.shape),
            dev[h.size : h.size + c.size].view(c.shape),
            dev[h.size + c.size :].view(x.shape),
        )

    def _to_host(
        self, h: torch.Tensor, c: torch.Tensor, out: torch.Tensor
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """States and outputs back on the host, from a GPU in one copy (the batch's one sync)."""
        if not self.staged:
            return h.numpy(), c.numpy(), out.numpy()
        flat = torch.cat([h.reshape(-1), c.reshape(-1), out.reshape(-1)]).cpu().numpy()
        return (
            flat[: h.numel()].reshape(h.shape),
            flat[h.numel() : h.numel() + c.numel()].reshape(c.shape),
            flat[h.numel() + c.numel() :].reshape(out.shape),
        )
