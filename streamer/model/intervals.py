"""Prediction intervals of a forecaster: split conformal, per horizon step, in the entity's units.

**Calibration** (in training, :func:`calibrate`): the chosen model forecasts the validation targets
it did not learn from (the last ``val_points`` of every series). Their residuals ``y - ŷ``, in the
scaled units of their forecast's origin (the entity's running statistics, as the model sees its
inputs), are pooled over entities per horizon step. For a level ``ℓ`` (say 80) the interval's
offsets are the residuals' quantiles at ``α/2`` and ``1 - α/2`` (``α = 1 - ℓ/100``), widened by the
finite-sample correction of split conformal prediction (the ``⌈(n+1)(1-α/2)⌉``-th smallest of n,
and its mirror). Signed quantiles, not absolute ones: an interval follows a model's bias.

**Serving** (:func:`served`): ``lo = ŷ + scale·q_lo`` and ``hi = ŷ + scale·q_hi``, with the scale that
unscales the forecast, one multiply-add per value over the whole batch; the stream and the offline
pass (``offline_predict``) compute them by the same function, so they are equal too.

A served forecast is ``K`` forecast values, then for each level its ``K`` lows and ``K`` highs: that
is the width of the predictor's outputs, kept and re-emitted as they are. Coverage holds when the
held-out errors look like the validation ones (exchangeability); ``streamer evaluate`` measures it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["calibrate", "served", "split"]

F64 = npt.NDArray[np.float64]

#: Fewest residuals of a horizon step that calibrate an interval (fewer: no intervals at all).
MIN_RESIDUALS = 20


def calibrate(
    residuals: Sequence[F64], levels: Sequence[int]
) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """The offsets ``(lo, hi)`` of each level, each ``(levels, K)``, from the residuals of each
    horizon step (``K`` arrays of scaled ``y - ŷ``). Empty when a step has too few residuals.

    >>> r = [np.arange(-50.0, 50.0), np.arange(-100.0, 100.0, 2)]
    >>> lo, hi = calibrate(r, [80])
    >>> lo, hi
    (((-41.0, -82.0),), ((40.0, 80.0),))
    """
    if not levels or any(len(r) < MIN_RESIDUALS for r in residuals):
        return (), ()
    lo, hi = [], []
    for level in levels:
        alpha = 1 - level / 100
        los, his = [], []
        for r in residuals:
            s = np.sort(np.asarray(r, np.float64))
            n = len(s)
            upper = min(math.ceil((n + 1) * (1 - alpha / 2)), n)  # 1-based rank
            lower = max(n + 1 - upper, 1)
            los.append(float(s[lower - 1]))
            his.append(float(s[upper - 1]))
        lo.append(tuple(los))
        hi.append(tuple(his))
    return tuple(lo), tuple(hi)


def served(forecast: F64, scale: F64, lo: F64, hi: F64) -> F64:
    """Forecasts ``(N, K)`` in the entity's units and the scale of each ``(N,)`` -> the served
    values ``(N, K·(1 + 2·levels))``: the forecast, then each level's lows and highs. ``lo`` and
    ``hi`` are the offsets ``(levels, K)``; without levels the forecast is returned as it is."""
    if not len(lo):
        return forecast
    n, k = forecast.shape
    out = np.empty((n, k * (1 + 2 * len(lo))))
    out[:, :k] = forecast
    s = scale[:, None]
    for i in range(len(lo)):
        a = k * (1 + 2 * i)
        out[:, a : a + k] = forecast + s * lo[i]
        out[:, a + k : a + 2 * k] = forecast + s * hi[i]
    return out


def split(values: F64, k: int, levels: int) -> tuple[F64, F64, F64]:
    """Served values ``(N, K·(1 + 2·levels))`` -> forecasts ``(N, K)``, lows and highs
    ``(N, levels, K)``."""
    n = len(values)
    rest = values[:, k:].reshape(n, levels, 2, k)
    return values[:, :k], rest[:, :, 0], rest[:, :, 1]
