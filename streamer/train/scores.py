"""What ``streamer evaluate`` scores with: MASE and sMAPE of a forecast, coverage and the scaled
interval score of its intervals, the naive forecasts they are compared with, the log loss of a
classifier."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from streamer.seasonal import season_of
from streamer.serve.times import infer_freq

__all__ = [
    "ForecastScore",
    "forecast_scores",
    "infer_season",
    "interval_scores",
    "log_loss",
    "mase_scale",
    "naive_forecasts",
    "smape",
]

F64 = npt.NDArray[np.float64]


def infer_season(df: pd.DataFrame) -> int:
    """The usual season length for the data's frequency (monthly 12, daily 7, hourly 24), 1 if
    it cannot be told."""
    return season_of(infer_freq(pd.to_datetime(df["ds"]), df["unique_id"])) or 1


@dataclass
class ForecastScore:
    mase: float
    smape: float


def mase_scale(history: F64, season: int) -> float:
    """The in-sample mean absolute error of the seasonal naive forecast (MASE's denominator)."""
    m = season if len(history) > season else 1
    return float(np.mean(np.abs(history[m:] - history[:-m]))) if len(history) > m else math.nan


def interval_scores(
    history: F64, actual: F64, lo: F64, hi: F64, level: int, season: int
) -> tuple[float, float]:
    """Coverage (the share of ``actual`` inside ``[lo, hi]``) and the scaled interval score
    (MSIS, as in the M4 competition: the width plus ``2/α`` times each miss, over the MASE scale).

    >>> interval_scores(np.array([1.0, 2, 3, 4]), np.array([5.0, 9]), np.array([4.0, 5]),
    ...                 np.array([6.0, 7]), 50, 1)
    (0.5, 6.0)
    """
    alpha = 1 - level / 100
    score = (hi - lo) + 2 / alpha * (np.maximum(lo - actual, 0) + np.maximum(actual - hi, 0))
    scale = mase_scale(history, season)
    inside = float(np.mean((actual >= lo) & (actual <= hi)))
    return inside, float(np.mean(score)) / scale if scale > 0 else math.nan


def smape(y: F64, f: F64) -> float:
    """The symmetric mean absolute percentage error, in percent."""
    den = np.maximum(np.abs(y) + np.abs(f), 1e-12)
    return float(np.mean(200 * np.abs(f - y) / den))


def forecast_scores(history: F64, actual: F64, forecast: F64, season: int) -> ForecastScore:
    """MASE and sMAPE of one entity's forecast.

    >>> s = forecast_scores(np.array([1.0, 2, 3, 4]), np.array([5.0, 6]), np.array([5.0, 7]), 1)
    >>> (s.mase, round(s.smape, 3))
    (0.5, 7.692)
    """
    scale = mase_scale(history, season)
    mae = float(np.mean(np.abs(forecast - actual)))
    return ForecastScore(mae / scale if scale > 0 else math.nan, smape(actual, forecast))


def naive_forecasts(history: F64, k: int, season: int) -> tuple[F64, F64]:
    """The naive (last value) and seasonal naive (last season) forecasts of ``k`` steps.

    >>> naive_forecasts(np.array([1.0, 2, 3, 4, 5]), 3, 2)
    (array([5., 5., 5.]), array([4., 5., 4.]))
    """
    naive = np.full(k, history[-1])
    m = season if len(history) >= season else 1
    last = history[-m:]
    return naive, np.asarray([last[i % m] for i in range(k)])


def log_loss(p: float) -> float:
    """The log loss of a true class given probability ``p``."""
    return -math.log(min(max(p, 1e-15), 1.0))
