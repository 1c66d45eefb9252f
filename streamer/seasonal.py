"""Per-entity level and seasonal components, updated online: additive Holt-Winters in the state.

The direction of the M4 competition's winner (Smyl's ES-RNN): exponential smoothing keeps a level
and a seasonal index per series, and one global recurrent network forecasts the series with them
taken out. Here every entity's state record keeps its components (``2 + m`` float64 values for a
season of ``m`` steps): the number of observations ``n``, the level ``l`` and the seasonal indices
``s_0 .. s_{m-1}`` (position ``n mod m``: events are taken to come at a regular frequency, as the
seasonal naive forecast takes them).

For each observation ``y`` at position ``j = n mod m``, with ``s = s_j`` once a season is known
(``n >= m``) and 0 before:

* the deseasonalised value is ``d = y - s``;
* the level is the plain mean of the first season's observations, then
  ``l <- l + alpha · (d - l)``;
* the seasonal index stores the raw observation during the first season, and when that season is
  complete the indices become deviations from its mean; after it ``s_j <- s + gamma · (y - l - s)``.

A second, longer season (Taylor's double seasonal Holt-Winters: a week of hours over a day of
hours, ``M`` a multiple of ``m``) adds ``M`` indices ``w_0 .. w_{M-1}`` after the first season's
(``2 + m + M`` values; position ``n mod M``), zero until the first season is known, then
``d = y - s - w`` and, after the first season's index, ``w_k <- w + delta · (y - l - s_j - w)``
with the new ``s_j``: the first season's indices carry the daily pattern, the second's what each
day of the week adds to it. The forecasts add both indices.

The network sees ``(d - l) / scale`` (the scale from the running statistics of ``d``, see
:mod:`streamer.scaling`), which carries the level's moves too (``l`` moves by ``alpha / (1 - alpha)``
of it), and its output ``o_k`` for step ``k`` becomes the forecast ``l + s_{(n + k - 1) mod m} +
o_k · scale``: the network forecasts the normalised, deseasonalised series. ``alpha`` and ``gamma``
(and ``delta``) are one set per model, fitted in training (:func:`fit`) to the components' own
forecasts.

Vectorised numpy in float64 over a batch of entities, ``comp`` of shape ``(B, 2 + m [+ M])``; training
runs the same functions step by step over whole series (:func:`expanding`), so train and serve see
identical values.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "SEASONS",
    "advance",
    "ahead",
    "check",
    "expanding",
    "fit",
    "fit_scores",
    "params",
    "season_of",
    "update",
    "width",
]

F64 = npt.NDArray[np.float64]

#: The season length that goes with a pandas frequency alias (its first letters).
SEASONS = {
    "MS": 12,
    "ME": 12,
    "M": 12,
    "QS": 4,
    "QE": 4,
    "Q": 4,
    "W": 52,
    "D": 7,
    "B": 5,
    "h": 24,
    "H": 24,
}
#: The smoothing parameters :func:`fit` chooses from.
ALPHAS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
GAMMAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
#: The second season's smoothing parameters :func:`fit` chooses from (with a second season).
DELTAS = (0.02, 0.05, 0.1, 0.2, 0.3)
#: The longest season.
MAX_SEASON = 10_000


def width(season: int, season2: int = 0) -> int:
    """Values of an entity's components for a season of ``season`` steps and a second one of
    ``season2`` (0: none)."""
    return 2 + season + season2 if season else 0


def params(smoothing: Sequence[float]) -> tuple[float, float, float]:
    """``(alpha, gamma, delta)`` of a model's smoothing (``delta`` 0 without a second season)."""
    alpha, gamma, *delta = smoothing
    return alpha, gamma, delta[0] if delta else 0.0


def check(season: int, season2: int = 0) -> str | None:
    """What is wrong with these seasons, or None.

    >>> check(24, 168), check(1), check(0, 7)
    (None, 'a season has 2 to 10,000 steps, not 1', 'a second season needs a first')
    >>> check(24, 100)
    'a second season is a multiple of the first (24), not 100'
    >>> check(24, 24)
    'a second season is longer than the first (24), not 24'
    """
    if not season:
        return "a second season needs a first" if season2 else None
    for v in (season, season2) if season2 else (season,):
        if v < 2 or v > MAX_SEASON:
            return f"a season has 2 to {MAX_SEASON:,} steps, not {v}"
    if season2 and season2 <= season:
        return f"a second season is longer than the first ({season}), not {season2}"
    if season2 % season:
        return f"a second season is a multiple of the first ({season}), not {season2}"
    return None


def season_of(freq: str | None) -> int:
    """The usual season length of a frequency (0 when unknown or none).

    >>> season_of("MS"), season_of("QS-OCT"), season_of("h"), season_of("15min"), season_of(None)
    (12, 4, 24, 0, 0)
    """
    if not freq:
        return 0
    base = freq.split("-")[0].lstrip("0123456789")
    return SEASONS.get(base, SEASONS.get(base[:1], 0))


def update(
    comp: F64,
    y: F64,
    alpha: float | F64,
    gamma: float | F64,
    delta: float | F64 = 0.0,
    *,
    season: int = 0,
) -> tuple[F64, F64]:
    """Add one observation ``y`` ``(B,)`` per entity to the components ``comp`` ``(B, 2 + m)``,
    or ``(B, 2 + m + M)`` with a second season (``season``: ``m``; 0: a single season, all of
    ``comp``'s indices); return the new components and the deseasonalised observations ``d``
    ``(B,)``. (``alpha``, ``gamma`` and ``delta``: one set for all, or one per entity, ``(B,)``
    each.)

    >>> c = np.zeros((1, 4))  # a season of 2
    >>> for v in (10.0, 14.0, 11.0):
    ...     c, d = update(c, np.array([v]), 0.5, 0.0)
    >>> c.tolist(), d.tolist()  # the level 12, then 12 + 0.5 (13 - 12); s = (-2, 2)
    ([[3.0, 12.5, -2.0, 2.0]], [13.0])
    """
    out = comp.copy()
    return out, advance(out, np.arange(len(comp)), y, alpha, gamma, delta, season=season)


def advance(
    comp: F64,
    rows: npt.NDArray[np.int64],
    y: F64,
    alpha: float | F64,
    gamma: float | F64,
    delta: float | F64 = 0.0,
    *,
    season: int = 0,
) -> F64:
    """:func:`update` in place: add ``y`` ``(R,)`` to the components of ``comp``'s ``rows``
    (distinct), touching only their count, level and the indices of their position; return
    ``d`` ``(R,)``. (Serving's way: a batch's rows are not copied for each wave.)"""
    m = season or comp.shape[1] - 2
    m2 = comp.shape[1] - 2 - m
    n, level = comp[rows, 0], comp[rows, 1]
    j = 2 + np.fmod(n, m).astype(np.int64)
    warm = n >= m
    s = np.where(warm, comp[rows, j], 0.0)
    if m2:
        k = 2 + m + np.fmod(n, m2).astype(np.int64)
        w = comp[rows, k]  # (0 until the first season is known)
        d: F64 = y - s - w
    else:
        d = y - s
    level = level + np.where(warm, alpha, 1.0 / (n + 1.0)) * (d - level)
    comp[rows, 0] = n + 1.0
    comp[rows, 1] = level
    if m2:
        s_new = np.where(warm, s + gamma * (y - level - w - s), y)
        comp[rows, j] = s_new
        comp[rows, k] = np.where(warm, w + delta * (y - level - s_new - w), 0.0)
    else:
        comp[rows, j] = np.where(warm, s + gamma * (y - level - s), y)
    done = n + 1.0 == m  # the first season is complete: its raw values become deviations
    if done.any():
        comp[rows[done], 2 : 2 + m] -= level[done, None]
    return d


def ahead(comp: F64, k: int, season: int = 0, rows: npt.NDArray[np.int64] | None = None) -> F64:
    """The components' forecasts of the next ``k`` observations, ``(B, k)``: the level plus each
    step's seasonal index, or indices (the level alone until the first season is known).
    ``season`` as in :func:`update`; ``rows``: those of ``comp`` only (``(R, k)``).

    >>> ahead(np.array([[3.0, 12.5, -2.0, 2.0]]), 3).tolist()
    [[14.5, 10.5, 14.5]]
    """
    m = season or comp.shape[1] - 2
    m2 = comp.shape[1] - 2 - m
    r = np.arange(len(comp)) if rows is None else rows
    n = comp[r, 0]
    steps = n[:, None] - 1.0 + np.arange(1, k + 1)  # (R, k)
    s = comp[r[:, None], 2 + np.fmod(steps, m).astype(np.int64)]
    if m2:
        s += comp[r[:, None], 2 + m + np.fmod(steps, m2).astype(np.int64)]
    out: F64 = comp[r, 1][:, None] + np.where((n >= m)[:, None], s, 0.0)
    return out


def expanding(
    y: F64, season: int, smoothing: Sequence[float], k: int, season2: int = 0
) -> tuple[F64, F64, F64]:
    """One series' deseasonalised values ``d`` and levels ``(T,)``, and the components' forecasts
    of the ``k`` next observations ``(T, k)``, after each observation: :func:`update` then
    :func:`ahead` once per step, as serving runs them (``smoothing``: ``(alpha, gamma)``, or
    ``(alpha, gamma, delta)`` with a second season)."""
    t = len(y)
    d, levels, fut = np.empty(t), np.empty(t), np.empty((t, k))
    comp = np.zeros((1, width(season, season2)))
    for i in range(t):
        comp, di = update(comp, y[i : i + 1], *params(smoothing), season=season)
        d[i], levels[i] = di[0], comp[0, 1]
        fut[i] = ahead(comp, k, season)[0]
    return d, levels, fut


def fit(
    series: Sequence[F64],
    season: int,
    horizon: int,
    scales: Sequence[F64],
    skip: int = 0,
    season2: int = 0,
) -> tuple[float, ...]:
    """The ``(alpha, gamma)`` of :data:`ALPHAS` x :data:`GAMMAS` (with a second season: the
    ``(alpha, gamma, delta)`` of those x :data:`DELTAS`) whose components forecast the series
    best (:func:`fit_scores`)."""
    sets, score = fit_scores(series, season, horizon, scales, skip, season2)
    best = int(np.nanargmin(score)) if np.isfinite(score).any() else 0
    return sets[best] if season2 else sets[best][:2]


def fit_scores(
    series: Sequence[F64],
    season: int,
    horizon: int,
    scales: Sequence[F64],
    skip: int = 0,
    season2: int = 0,
) -> tuple[list[tuple[float, float, float]], F64]:
    """Every set of smoothing parameters :func:`fit` chooses from, ``(alpha, gamma, delta)``,
    and its score: the mean over series of the absolute error of the components' forecasts
    ``1..horizon`` steps ahead, in each forecast origin's ``scales`` units, from the origin
    ``season + skip`` on (``season2 + skip`` with a second season); NaN where none was scored.

    Every set and series runs at once, one step at a time: :func:`update` and :func:`ahead`'s
    arithmetic for rows that all stand at the same position (every series starts at step 0), so
    a step touches only the level, the two indices of its position and the ``horizon`` ahead."""
    sets = list(itertools.product(ALPHAS, GAMMAS, DELTAS if season2 else (0.0,)))
    t_max = max(len(y) for y in series)
    ns, nset = len(series), len(sets)
    ys = np.full((t_max + horizon, ns), np.nan)
    sc = np.full((t_max, ns), np.nan)
    for i, (y, u) in enumerate(zip(series, scales, strict=True)):
        ys[: len(y), i], sc[: len(y), i] = y, u
    # (rows past their series' end turn NaN: their targets are NaN too, and are not scored)
    alpha, gamma, delta = (np.repeat([p[i] for p in sets], ns) for i in range(3))
    b = ns * nset
    level = np.zeros(b)
    idx = np.zeros((b, season))
    idx2 = np.zeros((b, season2))
    err, cnt = np.zeros(b), np.zeros(b)
    ahead_k = np.arange(1, horizon + 1)
    for t in range(t_max):
        y = np.tile(ys[t], nset)
        j = t % season
        warm = t >= season
        s = idx[:, j] if warm else 0.0
        w = idx2[:, t % season2] if season2 else 0.0
        level += (alpha if warm else 1.0 / (t + 1.0)) * (y - s - w - level)
        s_new = s + gamma * (y - level - w - s) if warm else y
        idx[:, j] = s_new
        if season2:
            idx2[:, t % season2] = w + delta * (y - level - s_new - w) if warm else 0.0
        if t + 1 == season:  # the first season is complete: its raw values become deviations
            idx -= level[:, None]
        if t < max(season, season2) + skip:
            continue
        ind = idx[:, (t + ahead_k) % season]  # (t + 1 >= season here)
        if season2:
            ind += idx2[:, (t + ahead_k) % season2]
        fut = level[:, None] + ind  # (as ahead adds them)
        target = np.tile(ys[t + 1 : t + 1 + horizon].T, (nset, 1))  # (b, horizon)
        e = np.abs(target - fut) / np.tile(sc[t], nset)[:, None]
        ok = ~np.isnan(e)
        err += np.where(ok, e, 0.0).sum(1)
        cnt += ok.sum(1)
    per = (err / np.maximum(cnt, 1)).reshape(nset, ns)
    score = np.where(cnt.reshape(nset, ns) > 0, per, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (a set without scores: NaN)
        mean: F64 = np.nanmean(score, axis=1)
    return sets, mean
