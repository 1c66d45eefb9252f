"""The predictor: a batch of events in, one prediction per newly applied event out.

Plain Python and torch; no Kafka. For one batch:

1. group the events by entity (waves keep each entity's order, see :mod:`streamer.batching`);
2. load the states of all its entities in one store round trip;
3. fence: drop events whose (partition, offset) the stored state (or this batch) already applied;
4. scale, then step each wave with one batched cell call on the device;
5. save all touched states in one conditional round trip (a newer stored state always wins);
6. return the predictions of the saved events, in batch order.

Model/state mismatch policy: a stored state whose layers or hidden size differ from the model's, or
whose bytes cannot be decoded, is reset to zeros (counted in ``resets``); its fence is kept, so no
event it applied is applied again. A state written by another
model version with the same shape is kept and continues under the current model.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from streamer import scaling
from streamer.batching import plan_waves
from streamer.errors import ConfigError, StateCodecError
from streamer.model import Forecaster
from streamer.schemas import Event, Prediction
from streamer.state import Dtype, StateRecord, StateStore, decode, encode, now_ms, read_fence

__all__ = ["BatchReport", "PendingBatch", "Predictor", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when there is one, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but torch sees no CUDA device")
    return torch.device(name)


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
    #: Entities whose stored state did not fit the model and was reset.
    resets: int = 0
    predictions: list[Prediction] = field(default_factory=list)


@dataclass
class PendingBatch:
    """A stepped batch whose states are not saved yet (see :meth:`Predictor.commit`)."""

    report: BatchReport
    events: Sequence[Event] = ()
    #: batch index -> prediction kept in the state and sent again
    reemit: dict[int, Prediction] = field(default_factory=dict)
    #: batch index -> (entity slot, prediction) of the newly applied events
    fresh: dict[int, tuple[int, Prediction]] = field(default_factory=dict)
    #: encoded states to save, one per entity slot
    items: list[tuple[str, bytes]] = field(default_factory=list)


class Predictor:
    """Steps batches of events through a model, with state kept in a :class:`StateStore`."""

    def __init__(
        self,
        model: Forecaster,
        version: str,
        store: StateStore,
        *,
        device: torch.device | str = "cpu",
        state_dtype: Dtype = "float32",
        max_kept_outputs: int = 1024,
    ):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.version = version
        self.store = store
        self.state_dtype: Dtype = state_dtype
        #: Most outputs kept per entity for re-emission (the newest ones).
        self.max_kept_outputs = max_kept_outputs
        spec = model.spec
        self._layers, self._hidden, self._horizon = spec.num_layers, spec.hidden_size, spec.horizon
        self._features = spec.features
        self._fmean = np.asarray(spec.feature_mean or [0.0] * len(spec.features), np.float64)
        self._fstd = np.asarray(spec.feature_std or [1.0] * len(spec.features), np.float64)

    @property
    def features(self) -> tuple[str, ...]:
        return self._features

    async def step_many(self, events: Sequence[Event]) -> list[Prediction]:
        """Apply the events and return the predictions of those newly applied, in batch order."""
        return (await self.process(events)).predictions

    async def process(
        self, events: Sequence[Event], committed: Mapping[int, int] | None = None
    ) -> BatchReport:
        """:meth:`prepare` then :meth:`commit`; callers that retry use the two steps directly."""
        return await self.commit(await self.prepare(events, committed))

    async def prepare(
        self, events: Sequence[Event], committed: Mapping[int, int] | None = None
    ) -> PendingBatch:
        """Read the states (one round trip) and step the events; nothing is written yet.

        ``committed`` maps a partition to its committed offset (the next one a restarted consumer
        reads): outputs of events below it were delivered and need not be kept any longer. Safe to
        call again after a failure: it has no effect outside this process.
        """
        pending = PendingBatch(report=BatchReport(events=len(events)), events=events)
        if not events:
            return pending
        entities = list(dict.fromkeys(e.unique_id for e in events))
        raws = await self.store.get_many(entities)
        loaded, kept = self._load(raws, pending.report)

        # Fence: skip an event at or below the last applied offset of its entity's partition:
        # the stored one, or an earlier event of this batch (a rebalance can deliver one twice).
        # A skipped event whose prediction the state kept gets it sent again, identical.
        where = {e: i for i, e in enumerate(entities)}
        last = {e: (int(loaded.partition[i]), int(loaded.offset[i])) for e, i in where.items()}
        applied: list[Event] = []
        applied_at: list[int] = []
        reemitted: set[tuple[int, int]] = set()
        for i, ev in enumerate(events):
            part, off = last[ev.unique_id]
            if part == ev.partition and ev.offset <= off:
                floor = committed.get(ev.partition) if committed is not None else None
                if floor is not None and ev.offset < floor:
                    continue  # committed: its output was delivered, in a committed transaction too
                old = self._kept_prediction(kept.get(where[ev.unique_id]), ev)
                if old is not None and (ev.partition, ev.offset) not in reemitted:
                    reemitted.add((ev.partition, ev.offset))
                    pending.reemit[i] = old
                continue
            last[ev.unique_id] = (ev.partition, ev.offset)
            applied.append(ev)
            applied_at.append(i)
        pending.report.skipped = len(events) - len(applied)
        pending.report.reemitted = len(pending.reemit)
        if not applied:
            return pending

        plan = plan_waves([e.unique_id for e in applied])
        rows = np.fromiter((where[e] for e in plan.entities), np.int64, len(plan.entities))
        st = loaded.take(rows)
        forecasts, steps = self._step(applied, plan.slot, plan.waves, st)

        new_out: dict[int, list[int]] = {}
        for n, (i, ev) in enumerate(zip(applied_at, applied, strict=True)):
            j = int(plan.slot[n])
            new_out.setdefault(j, []).append(n)
            pending.fresh[i] = (
                j,
                Prediction.of(ev, self.version, int(steps[n]), forecasts[n].tolist()),
            )
        stamp = now_ms()
        for j, entity in enumerate(plan.entities):
            ns = np.asarray(new_out[j], np.int64)
            offs = np.fromiter((applied[n].offset for n in ns), np.int64, len(ns))
            out_offsets, out_steps, out_fc = offs, steps[ns], forecasts[ns]
            prev = kept.get(int(rows[j]))
            part = int(st.partition[j])
            if (
                prev is not None
                and prev.partition == part
                and len(prev.out_offsets)
                and prev.out_forecasts.shape[1] == self._horizon
            ):
                # Older outputs stay until their offsets are committed (the fence already
                # guarantees they are below this batch's).
                floor = committed.get(part) if committed is not None else None
                keep = prev.out_offsets >= (floor if floor is not None else -1)
                out_offsets = np.concatenate([prev.out_offsets[keep], offs])
                out_steps = np.concatenate([prev.out_steps[keep], out_steps])
                out_fc = np.concatenate([prev.out_forecasts[keep], out_fc])
            cap = self.max_kept_outputs
            rec = StateRecord(
                h=st.h[:, j],
                c=st.c[:, j],
                model_version=self.version,
                step=int(st.step[j]),
                partition=part,
                offset=int(st.offset[j]),
                updated_ms=stamp,
                count=float(st.count[j]),
                mean=float(st.mean[j]),
                var=float(st.var[j]),
                dtype=self.state_dtype,
                out_offsets=out_offsets[-cap:],
                out_steps=out_steps[-cap:],
                out_forecasts=out_fc[-cap:],
            )
            pending.items.append((entity, encode(rec)))
        return pending

    async def commit(self, pending: PendingBatch) -> BatchReport:
        """Save the stepped states in one conditional round trip; return the predictions: those
        of saved states and the re-emitted ones, in batch order.

        Retrying a commit whose reply was lost is safe: a record already stored counts as saved.
        """
        report = pending.report
        saved = await self.store.put_many(pending.items) if pending.items else []
        report.rejected = saved.count(False)
        report.rejected_entities = [
            e for (e, _), ok in zip(pending.items, saved, strict=True) if not ok
        ]
        if report.rejected:
            log.warning(
                "%d states were newer in the store; their events were not applied here",
                report.rejected,
            )
        out: list[Prediction] = []
        for i in range(len(pending.events)):
            if i in pending.reemit:
                out.append(pending.reemit[i])
            elif i in pending.fresh:
                j, pred = pending.fresh[i]
                if saved[j]:
                    out.append(pred)
        report.applied = sum(1 for j, _ in pending.fresh.values() if saved[j])
        report.predictions = out
        return report

    def _kept_prediction(self, rec: StateRecord | None, ev: Event) -> Prediction | None:
        """The prediction a stored state kept for an event it already applied, if any."""
        if rec is None or rec.partition != ev.partition:
            return None
        hit = np.flatnonzero(rec.out_offsets == ev.offset)
        if not len(hit):
            return None
        k = int(hit[-1])
        return Prediction.of(
            ev, rec.model_version, int(rec.out_steps[k]), rec.out_forecasts[k].tolist()
        )

    def _load(
        self, raws: Sequence[bytes | None], report: BatchReport
    ) -> tuple[_States, dict[int, StateRecord]]:
        """The states as arrays, and the decoded records (for their kept outputs) by slot."""
        st = _States.zeros(len(raws), self._layers, self._hidden)
        kept: dict[int, StateRecord] = {}
        for j, raw in enumerate(raws):
            if raw is None:
                continue
            try:
                rec = decode(raw)
            except StateCodecError as exc:
                log.warning("resetting an undecodable state: %s", exc)
                report.resets += 1
                # Keep its fence: the store still refuses writes at or below it.
                fence = read_fence(raw)
                if fence is not None:
                    st.partition[j], st.offset[j] = fence
                continue
            st.partition[j], st.offset[j] = rec.partition, rec.offset
            kept[j] = rec
            if rec.layers != self._layers or rec.hidden_size != self._hidden:
                report.resets += 1  # h, c, scaling and step start over; the fence stays
                continue
            st.h[:, j], st.c[:, j] = rec.h, rec.c
            st.step[j] = rec.step
            st.count[j], st.mean[j], st.var[j] = rec.count, rec.mean, rec.var
        return st, kept

    def _step(
        self,
        events: Sequence[Event],
        slot: npt.NDArray[np.int64],
        waves: list[npt.NDArray[np.int64]],
        st: _States,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """Advance the states ``st`` (in place) through the events; return forecasts and steps."""
        n = len(events)
        y = np.fromiter((e.y for e in events), np.float64, n)
        mean_e, scale_e = np.empty(n), np.empty(n)
        steps = np.empty(n, np.int64)
        ev_part = np.fromiter((e.partition for e in events), np.int64, n)
        ev_off = np.fromiter((e.offset for e in events), np.int64, n)
        for w in waves:  # scaling statistics advance in event order, per entity
            s = slot[w]
            stats = scaling.update((st.count[s], st.mean[s], st.var[s]), y[w])
            st.count[s], st.mean[s], st.var[s] = stats
            mean_e[w], scale_e[w] = stats[1], scaling.scale_of(stats)
            st.step[s] += 1
            steps[w] = st.step[s]
            st.partition[s], st.offset[s] = ev_part[w], ev_off[w]

        x_host = np.empty((n, 1 + len(self._features)), np.float32)  # (N, I)
        x_host[:, 0] = (y - mean_e) / scale_e
        if self._features:
            feats = np.asarray([e.features for e in events], np.float64)
            x_host[:, 1:] = (feats - self._fmean) / self._fstd

        order = np.concatenate(waves)
        bounds = np.cumsum([0, *(len(w) for w in waves)]).tolist()
        dev = self.device
        # One transfer in: inputs, states and the wave layout; one transfer out at the end.
        x = torch.from_numpy(x_host).to(dev, non_blocking=True)
        h = torch.from_numpy(st.h).to(dev, non_blocking=True)  # (L, U, H)
        c = torch.from_numpy(st.c).to(dev, non_blocking=True)
        order_d = torch.from_numpy(order).to(dev, non_blocking=True)
        slot_d = torch.from_numpy(slot[order]).to(dev, non_blocking=True)
        out = torch.empty((n, self._horizon), device=dev)
        with torch.inference_mode():
            for a, b in itertools.pairwise(bounds):
                ev, ent = order_d[a:b], slot_d[a:b]
                yk, (hk, ck) = self.model.step(x[ev], (h[:, ent], c[:, ent]))  # (B, K), (L, B, H)
                h[:, ent], c[:, ent], out[ev] = hk, ck, yk
        st.h[...] = h.cpu().numpy()
        st.c[...] = c.cpu().numpy()
        forecasts = out.cpu().numpy().astype(np.float64) * scale_e[:, None] + mean_e[:, None]
        return forecasts, steps

    async def aclose(self) -> None:
        await self.store.aclose()


@dataclass
class _States:
    """States of U entities as arrays: h, c ``(L, U, H)`` float32; the rest ``(U,)``."""

    h: npt.NDArray[np.float32]
    c: npt.NDArray[np.float32]
    step: npt.NDArray[np.int64]
    partition: npt.NDArray[np.int64]
    offset: npt.NDArray[np.int64]
    count: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    var: npt.NDArray[np.float64]

    @classmethod
    def zeros(cls, u: int, layers: int, hidden: int) -> _States:
        return cls(
            h=np.zeros((layers, u, hidden), np.float32),
            c=np.zeros((layers, u, hidden), np.float32),
            step=np.zeros(u, np.int64),
            partition=np.full(u, -1, np.int64),
            offset=np.full(u, -1, np.int64),
            count=np.zeros(u),
            mean=np.zeros(u),
            var=np.zeros(u),
        )

    def take(self, rows: npt.NDArray[np.int64]) -> _States:
        return _States(
            h=np.ascontiguousarray(self.h[:, rows]),
            c=np.ascontiguousarray(self.c[:, rows]),
            step=self.step[rows].copy(),
            partition=self.partition[rows].copy(),
            offset=self.offset[rows].copy(),
            count=self.count[rows].copy(),
            mean=self.mean[rows].copy(),
            var=self.var[rows].copy(),
        )
