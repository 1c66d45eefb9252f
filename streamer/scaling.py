"""Per-entity online scaling, so one global model serves entities of very different scales.

Each entity keeps running statistics of its target ``y`` in its state record: the number of
observations, a running mean and a running variance. The weight of a new observation is
``max(1/count, alpha)``: the plain expanding mean and variance over the first ``1/alpha``
observations, then exponentially weighted ones that follow a series whose level drifts (growth,
inflation). Before an event is stepped its ``y`` is added to the statistics, then the model sees
``(y - mean) / scale`` and its forecast is mapped back with ``forecast * scale + mean``. Training uses
the same functions over whole series, so train and serve see identical inputs.

Everything here is vectorised numpy in float64 over a batch of entities (shape ``(B,)``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_ALPHA", "Stats", "expanding", "scale_of", "update"]

F64 = npt.NDArray[np.float64]
#: ``(count, mean, var)``, each of shape ``(B,)``.
Stats = tuple[F64, F64, F64]

#: Weight floor of a new observation: statistics over roughly the last 1/alpha events.
DEFAULT_ALPHA = 1.0 / 36
#: The scale never falls below this fraction of |mean| (constant series) nor below ``_ABS_FLOOR``.
_REL_FLOOR = 1e-3
_ABS_FLOOR = 1e-8


def update(stats: Stats, y: F64, alpha: float = DEFAULT_ALPHA) -> Stats:
    """Add one observation per entity. ``y`` has shape ``(B,)``."""
    count, mean, var = stats
    count = count + 1.0
    w = np.maximum(1.0 / count, alpha)
    delta = y - mean
    mean = mean + w * delta
    var = (1.0 - w) * (var + w * delta * delta)
    return count, mean, var


def scale_of(stats: Stats) -> F64:
    """Standard deviation with a floor, shape ``(B,)``.

    >>> z = np.zeros(1)
    >>> s = update(update((z, z, z), np.array([1.0])), np.array([3.0]))
    >>> float(s[1][0]), float(scale_of(s)[0])
    (2.0, 1.0)
    """
    _, mean, var = stats
    std = np.sqrt(np.maximum(var, 0.0))
    out: F64 = np.maximum(std, np.maximum(_REL_FLOOR * np.abs(mean), _ABS_FLOOR))
    return out


def expanding(y: F64, alpha: float = DEFAULT_ALPHA) -> tuple[F64, F64]:
    """Running ``(mean, scale)`` after each observation of one series, shape ``(T,)`` each.

    Equal to calling :func:`update` then :func:`scale_of` once per step, in the same float64 order.
    """
    t = len(y)
    means = np.empty(t)
    scales = np.empty(t)
    z = np.zeros(1)
    stats: Stats = (z, z, z)
    for i in range(t):
        stats = update(stats, y[i : i + 1], alpha)
        means[i] = stats[1][0]
        scales[i] = scale_of(stats)[0]
    return means, scales
