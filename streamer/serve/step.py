"""Stepping a batch's states through the model on the device: the waves, the scaling, the heads.

No store and no Kafka here: a :class:`~streamer.state.batch.StateBatch` of the stepped entities
and the applied events (columns) in, the states advanced in place and each event's prediction
values out. On a GPU the inputs and states of a batch go to the device in one copy from a pinned
buffer and come back in one copy: the batch's one synchronisation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from streamer import calendar, scaling, seasonal
from streamer.errors import ConfigError
from streamer.model import ModelSpec, SequenceModel, intervals, nextevent
from streamer.model.vocab import OOV, Vocabulary
from streamer.serve.columns import EventColumns
from streamer.state.batch import StateBatch

__all__ = ["Served", "Stepper", "resolve_device"]

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


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
    fmean: F64  # (F,) of the input features
    fstd: F64
    #: columns of the event features that are model inputs, and of the window end marker
    inputs: I64
    end: int | None
    #: a forecaster's interval offsets ``(levels, K)`` in scaled units (empty: no intervals)
    lo: F64
    hi: F64
    #: a next-event model's vocabularies, one per categorical column
    vocabularies: tuple[Vocabulary, ...] = ()

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
        lo, hi = np.asarray(spec.interval_lo, np.float64), np.asarray(spec.interval_hi, np.float64)
        vocabularies = tuple(spec.vocabulary.values())
        model = model.eval().to(device)
        return cls(model, version, mean[inputs], std[inputs], inputs, end, lo, hi, vocabularies)

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def kept_width(self) -> int:
        """Values per kept output: the prediction's (with its intervals), and a window's length
        for window models."""
        return self.spec.served_outputs + (1 if self.spec.window else 0)


class Stepper:
    """Runs waves of events through a model on one device."""

    def __init__(self, device: torch.device, fused_from: int | None = None):
        self.device = device
        #: Waves of at least this many events run the fused sequence kernel instead of one cell
        #: call per layer (0: never). By default from 256 on CPU, never on a GPU, as measured:
        #: on this project's 2-core machine with one thread (H=64, L=2) the fused kernel took
        #: 1.5 against 2.7 µs per event at 1,000 entities and lost below about 128; on an H200
        #: the per-layer cells were faster at every batch size from 1k to 64k (4.4M against 3.7M
        #: entity-steps/s at 1k, 145M against 7.6M at 64k: cuDNN's sequence kernel pays a fixed
        #: cost per call). ``bench/gpu_check.py`` measures both on any machine.
        if fused_from is None:
            fused_from = 0 if device.type == "cuda" else 256
        self.fused_from = fused_from
        #: On a GPU, inputs and states go over in one pinned buffer and come back in one copy.
        self.staged = device.type != "cpu"
        #: the pinned host buffer of the copy to the device, kept from batch to batch (pinning
        #: memory is a slow driver call) and grown when a batch needs more
        self._pinned: torch.Tensor | None = None

    def _fused(self, batch: int) -> bool:
        return 0 < self.fused_from <= batch

    @staticmethod
    def _inputs(sv: Served, ev: EventColumns, y: F64) -> tuple[F32, F64 | None]:
        """Model inputs ``(N, I)`` with y unscaled in column 0, and the raw features ``(N, F)``."""
        spec = sv.spec
        x = np.empty((len(ev), spec.input_size), np.float32)
        x[:, 0] = y
        nf = len(sv.inputs)
        if spec.calendar:
            x[:, 1 + nf :] = calendar.inputs(ev.ds, spec.calendar)
        if not spec.features:
            return x, None
        feats = ev.features
        x[:, 1 : 1 + nf] = (feats[:, sv.inputs] - sv.fmean) / sv.fstd
        return x, feats

    @staticmethod
    def _advance(ev: EventColumns, slot: I64, waves: list[I64], st: StateBatch) -> I64:
        """Count the events into their states' steps and move the fences to them (``st`` in
        place, wave by wave); return each event's step."""
        steps = np.empty(len(ev), np.int64)
        for w in waves:
            s = slot[w]
            st.step[s] += 1
            steps[w] = st.step[s]
            st.partition[s], st.offset[s] = ev.partition[w], ev.offset[w]
        return steps

    def step(
        self, sv: Served, ev: EventColumns, slot: I64, waves: list[I64], st: StateBatch
    ) -> tuple[F64, I64]:
        """Advance the states ``st`` (in place) through the applied events ``ev``; return the
        predictions' values (forecasts and their intervals, or class probabilities) and steps."""
        n = len(ev)
        y = ev.y
        steps = self._advance(ev, slot, waves, st)
        x_host, _ = self._inputs(sv, ev, y)  # (N, I)
        if sv.spec.season:
            start_e, scale_e = self._components(sv, y, slot, waves, st, x_host)
        elif sv.spec.scaling == "entity":
            mean_e, scale_e = self._statistics(y, slot, waves, st)
            x_host[:, 0] = (y - mean_e) / scale_e
            start_e = mean_e[:, None]
        else:
            self._statistics(y, slot, waves, st)
            start_e, scale_e = np.zeros((n, 1)), np.ones(n)

        values = self._run(sv, x_host, slot, waves, st).astype(np.float64)
        if sv.spec.task == "forecast":
            values = values * scale_e[:, None] + start_e
        if len(sv.lo):
            values = intervals.served(values, scale_e, sv.lo, sv.hi)
        return values, steps

    def _run(self, sv: Served, x_host: F32, slot: I64, waves: list[I64], st: StateBatch) -> F32:
        """Step the states ``st`` (in place) through the waves of model inputs ``x_host``
        ``(N, raw I)``: one batched call per wave; return the served outputs ``(N, ...)``."""
        n = len(x_host)
        h, c, x = self._to_device(st.h, st.c, x_host)  # (L, U, H), (L, U, H), (N, I)
        model = sv.model
        with torch.inference_mode():
            if len(waves) == 1:  # every entity once, in slot order: no gather, no scatter
                out, (h, c) = model.step(x, (h, c), self._fused(n))
            else:
                dev = self.device
                order = np.concatenate(waves)
                bounds = np.cumsum([0, *(len(w) for w in waves)]).tolist()
                order_d = torch.from_numpy(order).to(dev, non_blocking=True)
                slot_d = torch.from_numpy(slot[order]).to(dev, non_blocking=True)
                out = torch.empty((n, sv.spec.raw_outputs), device=dev)  # (N, M·K)
                # the first wave has every entity's first event, in slot order: the states as
                # they are, without a gather and a scatter
                first = order_d[: bounds[1]]
                out[first], (h, c) = model.step(x[first], (h, c), self._fused(bounds[1]))
                for a, b in itertools.pairwise(bounds[1:]):
                    rows, ent = order_d[a:b], slot_d[a:b]
                    state = (h[:, ent], c[:, ent])
                    yk, (hk, ck) = model.step(x[rows], state, self._fused(b - a))  # (B, K)
                    h[:, ent], c[:, ent], out[rows] = hk, ck, yk
            out = model.serve(out)
        st.h[...], st.c[...], raw = self._to_host(h, c, out)
        return raw

    def next_events(
        self, sv: Served, ev: EventColumns, slot: I64, waves: list[I64], st: StateBatch
    ) -> tuple[F64, I64, dict[str, int]]:
        """:meth:`step` for a next-event model: the events' inputs are their features and the
        ids of their categorical values; the served values and each entity's previous
        prediction in its components follow :func:`streamer.model.nextevent.advance`. Also
        returns, per categorical column, how many values were out of its vocabulary."""
        spec = sv.spec
        steps = self._advance(ev, slot, waves, st)
        nf = len(spec.features)
        x_host = np.empty((len(ev), spec.raw_input_size), np.float32)
        if nf:
            x_host[:, :nf] = (ev.features[:, sv.inputs] - sv.fmean) / sv.fstd
        ids = [v.ids(col) for v, col in zip(sv.vocabularies, ev.categories, strict=True)]
        for j, col_ids in enumerate(ids):
            x_host[:, nf + j] = col_ids
        raw = self._run(sv, x_host, slot, waves, st).astype(np.float64)
        actual = ids[spec.categorical.index(spec.next or "")]
        values = np.empty((len(ev), spec.served_outputs))
        # a state another model version wrote holds that model's last prediction: none of ours
        ours = st.version == sv.version.encode("ascii")
        for i, w in enumerate(waves):  # in event order, per entity: each one's last prediction
            s = slot[w]
            had = (steps[w] > 1) & (ours[s] if i == 0 else True)
            values[w], st.comp[s] = nextevent.advance(raw[w], actual[w], st.comp[s], had)
        oov = {c: int((i == OOV).sum()) for c, i in zip(spec.categorical, ids, strict=True)}
        return values, steps, oov

    @staticmethod
    def _statistics(y: F64, slot: I64, waves: list[I64], st: StateBatch) -> tuple[F64, F64]:
        """Add each event's y to its entity's running statistics (``st`` in place); return the
        running mean and scale after each event ``(N,)``."""
        if len(waves) == 1:  # every entity once: the statistics of all at once
            stats = scaling.update((st.count, st.mean, st.var), y)
            st.count, st.mean, st.var = stats
            return stats[1], scaling.scale_of(stats)
        mean_e, scale_e = np.empty(len(y)), np.empty(len(y))
        for w in waves:  # the statistics advance in event order, per entity
            s = slot[w]
            stats = scaling.update((st.count[s], st.mean[s], st.var[s]), y[w])
            st.count[s], st.mean[s], st.var[s] = stats
            mean_e[w], scale_e[w] = stats[1], scaling.scale_of(stats)
        return mean_e, scale_e

    @staticmethod
    def _components(
        sv: Served, y: F64, slot: I64, waves: list[I64], st: StateBatch, x: F32
    ) -> tuple[F64, F64]:
        """Seasonal forecasters: advance each entity's level and seasonal components and the
        running statistics of its deseasonalised y (``st`` in place), put the network's input in
        ``x[:, 0]``; return where each event's forecasts start ``(N, K)`` and their unit ``(N,)``
        (:mod:`streamer.seasonal`)."""
        spec = sv.spec
        m, sm = spec.season, seasonal.params(spec.smoothing)
        start = np.empty((len(y), spec.horizon))
        d_e, level_e = np.empty(len(y)), np.empty(len(y))
        for w in waves:  # in event order, per entity
            s = slot[w]
            d_e[w] = seasonal.advance(st.comp, s, y[w], *sm, season=m)  # (in place)
            level_e[w], start[w] = st.comp[s, 1], seasonal.ahead(st.comp, spec.horizon, m, s)
        _, scale_e = Stepper._statistics(d_e, slot, waves, st)
        x[:, 0] = (d_e - level_e) / scale_e
        return start, scale_e

    def windows(
        self, sv: Served, ev: EventColumns, slot: I64, waves: list[I64], st: StateBatch
    ) -> tuple[I64, F64, I64, I64]:
        """Add the events to their entities' open windows (``st`` in place) and score the windows
        they close. Returns the closing events' positions, their predictions' values, steps and
        window lengths.

        A window state is one row: the raw inputs of the open window's events, ``window`` x I
        values; its ``count``, ``mean`` and ``var`` are the plain statistics of the open window's
        y (``spec.scaling="entity"`` scales a closed window's y by them, as training does).
        """
        spec = sv.spec
        size, width = spec.window, spec.input_size
        y = ev.y
        x, feats = self._inputs(sv, ev, y)
        ends = feats[:, sv.end] != 0 if feats is not None and sv.end is not None else None
        steps = self._advance(ev, slot, waves, st)
        buf = st.h[0].reshape(len(st), size, width)  # a view: writes go to ``st``
        closing: list[int] = []
        windows: list[F32] = []
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
        order = np.argsort(sel, kind="stable")  # in batch order
        return sel[order], values[order], steps[sel][order], lengths[order]

    def _to_device(self, h: F32, c: F32, x: F32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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

    def _to_host(self, h: torch.Tensor, c: torch.Tensor, out: torch.Tensor) -> tuple[F32, F32, F32]:
        """States and outputs back on the host, from a GPU in one copy (the batch's one sync)."""
        if not self.staged:
            return h.numpy(), c.numpy(), out.numpy()
        flat = torch.cat([h.reshape(-1), c.reshape(-1), out.reshape(-1)]).cpu().numpy()
        return (
            flat[: h.numel()].reshape(h.shape),
            flat[h.numel() : h.numel() + c.numel()].reshape(c.shape),
            flat[h.numel() + c.numel() :].reshape(out.shape),
        )
