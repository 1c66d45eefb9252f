"""The offline forward pass: a model over whole series, as the stream must reproduce it.

The same inputs, in the same precision, as :class:`streamer.serve.predictor.Predictor` builds them
one event at a time (:func:`series_inputs`): ``streamer evaluate``, the training checks and the
tests compare every streamed prediction with :func:`offline_predict` (step models) or
:func:`offline_windows` (window models).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from streamer import calendar, scaling, seasonal
from streamer.model import ModelSpec, SequenceModel, intervals
from streamer.train.data import Series

__all__ = [
    "offline_predict",
    "offline_windows",
    "series_inputs",
    "window_bounds",
    "window_inputs",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def series_inputs(s: Series, spec: ModelSpec) -> tuple[F32, F64, F64]:
    """Model inputs ``(T, I)`` of one series, and after each step where its forecasts start from
    and their unit: a forecast's values are ``start + output · unit`` (``start`` ``(T, 1)``, the
    running mean, or ``(T, K)`` with seasonal components: the components' own forecasts; ``unit``
    ``(T,)``, the running scale).

    The same arithmetic, in the same precision, as :class:`streamer.serve.predictor.Predictor`.
    """
    t = len(s.y)
    x = np.empty((t, spec.input_size), np.float32)
    if spec.season:
        d, level, start = seasonal.expanding(
            s.y, spec.season, spec.smoothing, spec.horizon, spec.season2
        )
        scale = scaling.expanding(d)[1]
        x[:, 0] = (d - level) / scale
    else:
        if spec.scaling == "entity":
            mean, scale = scaling.expanding(s.y)
        else:
            mean, scale = np.zeros(t), np.ones(t)
        x[:, 0] = (s.y - mean) / scale
        start = mean[:, None]
    if spec.input_features:
        cols = [spec.features.index(f) for f in spec.input_features]
        nf = len(spec.features)
        fm = np.asarray(spec.feature_mean or [0.0] * nf, np.float64)[cols]
        fs = np.asarray(spec.feature_std or [1.0] * nf, np.float64)[cols]
        x[:, 1 : 1 + len(cols)] = (s.features[:, cols] - fm) / fs
    if spec.calendar:
        x[:, 1 + len(spec.input_features) :] = calendar.inputs(s.ds, spec.calendar)
    return x, start, scale


@torch.no_grad()
def offline_predict(model: SequenceModel, s: Series) -> tuple[F64, F32, F32]:
    """A step model over a whole series with the fused sequence kernel: each event's output as
    served (forecasts in the series' units and their intervals' bounds, ``(T, K·(1 + 2·levels))``,
    or class probabilities ``(T, K)``), the final h and c. This is what the streaming pipeline
    must reproduce event by event."""
    model.eval()
    spec = model.spec
    x, start, scale = series_inputs(s, spec)
    dev = next(model.parameters()).device
    raw, (h, c) = model(torch.from_numpy(x)[None].to(dev))  # (1, T, K), (L, 1, H)
    out = model.serve(raw)[0].cpu().numpy().astype(np.float64)
    if spec.task == "forecast":
        out = out * scale[:, None] + start
        if spec.levels:
            lo, hi = np.asarray(spec.interval_lo), np.asarray(spec.interval_hi)
            out = intervals.served(out, scale, lo, hi)
    return out, h[:, 0].cpu().numpy(), c[:, 0].cpu().numpy()


def window_bounds(s: Series, spec: ModelSpec) -> list[tuple[int, int]]:
    """``(start, end)`` rows of the series' closed windows, as the predictor closes them: after
    ``window`` events or at an event whose end marker is non-zero. An open last window is left."""
    ends = (
        s.features[:, spec.features.index(spec.window_end)] != 0
        if spec.window_end
        else np.zeros(len(s.y), bool)
    )
    out, start = [], 0
    for i in range(len(s.y)):
        if i + 1 - start >= spec.window or ends[i]:
            out.append((start, i + 1))
            start = i + 1
    return out


def window_inputs(s: Series, spec: ModelSpec, a: int, b: int) -> F32:
    """One closed window's inputs ``(T, I)``, as the predictor builds them from its buffer: y as
    float32, scaled by the window's own plain statistics."""
    x = series_inputs(Series(s.unique_id, s.ds[a:b], s.y[a:b], s.features[a:b]), spec)[0]
    x[:, 0] = s.y[a:b]
    if spec.scaling == "entity":
        stats = (np.zeros(1), np.zeros(1), np.zeros(1))
        for v in s.y[a:b]:
            stats = scaling.update(stats, np.array([v]), alpha=0.0)
        x[:, 0] = (x[:, 0] - float(stats[1][0])) / float(scaling.scale_of(stats)[0])
    return x


@torch.no_grad()
def offline_windows(model: SequenceModel, s: Series) -> list[tuple[int, F64]]:
    """A window model over a whole series: ``(row of the closing event, probabilities)`` of each
    closed window."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for a, b in window_bounds(s, model.spec):
        x = torch.from_numpy(window_inputs(s, model.spec, a, b))[None].to(dev)
        probs = model.serve(model.window_logits(x))[0].cpu().numpy().astype(np.float64)
        out.append((b - 1, probs))
    return out
