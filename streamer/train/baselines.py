"""Classical forecasts beside the model's in ``streamer evaluate --baselines``: AutoETS and Theta
fitted per entity with statsforecast (the ``baselines`` extra; the entities in parallel, one process
per core), with their own prediction intervals (statsforecast's, from each model's error
distribution)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd
from rich.console import Console

from streamer.errors import DataError

__all__ = ["CLASSICAL", "Forecast", "classical_forecasts"]

F64 = npt.NDArray[np.float64]


@dataclass
class Forecast:
    """One entity's forecast of the held-out points, and its intervals' bounds by level."""

    mean: F64
    bounds: dict[int, tuple[F64, F64]] = field(default_factory=dict)


#: The classical methods ``streamer evaluate --baselines`` fits per entity, by name in its results.
CLASSICAL = ("auto_ets", "theta")


def classical_forecasts(
    history: pd.DataFrame,
    horizon: int,
    season: int,
    console: Console | None = None,
    levels: tuple[int, ...] = (),
    jobs: int | None = None,
) -> dict[str, dict[str, Forecast]]:
    """AutoETS and (standard) Theta forecasts of every entity's next ``horizon`` points, fitted on
    its ``history`` alone with season length ``season`` (statsforecast; a series too short for a
    model gets the naive forecast), with intervals at ``levels``: ``{method: {entity: forecast}}``.
    ``jobs`` processes fit the entities (None: one per core this process may run on)."""
    try:
        from statsforecast import StatsForecast
        from statsforecast.models import AutoETS, Naive, Theta
    except ImportError:
        raise DataError(
            "--baselines needs statsforecast: pip install 'streamer[baselines]'"
        ) from None
    started = time.monotonic()
    frame = history[["unique_id", "y"]].copy()
    frame["ds"] = frame.groupby("unique_id").cumcount()  # (positions: ragged panels fit too)
    sf = StatsForecast(
        models=[AutoETS(season_length=season), Theta(season_length=season)],
        freq=1,
        fallback_model=Naive(),
        n_jobs=min(jobs or _cores(), frame["unique_id"].nunique()),
    )
    with np.errstate(all="ignore"):
        sf.fit(df=frame)
        # One level per call: with the fallback model in some series, statsforecast 2.1 puts a
        # model's bounds of several levels under each other's column names.
        fc = sf.predict(h=horizon)
        for v in levels:
            fc = fc.merge(
                sf.predict(h=horizon, level=[v]), on=["unique_id", "ds"], suffixes=("", "_")
            )
    out: dict[str, dict[str, Forecast]] = {name: {} for name in CLASSICAL}
    for uid, g in fc.groupby("unique_id", sort=False):
        for name, col in zip(CLASSICAL, ("AutoETS", "Theta"), strict=True):
            out[name][str(uid)] = Forecast(
                g[col].to_numpy(np.float64),
                {
                    v: (
                        g[f"{col}-lo-{v}"].to_numpy(np.float64),
                        g[f"{col}-hi-{v}"].to_numpy(np.float64),
                    )
                    for v in levels
                },
            )
    if console is not None:
        console.print(
            f"AutoETS and Theta fitted on {len(out['theta'])} entities in "
            f"{time.monotonic() - started:.1f}s"
        )
    return out


def _cores() -> int:
    """The cores this process may run on (its affinity: a container's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
