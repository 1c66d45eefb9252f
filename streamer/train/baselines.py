"""Classical forecasts beside the model's in ``streamer evaluate --baselines``: AutoETS and Theta
fitted per entity with statsforecast (the ``baselines`` extra)."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import pandas as pd
from rich.console import Console

from streamer.errors import DataError

__all__ = ["CLASSICAL", "classical_forecasts"]

F64 = npt.NDArray[np.float64]

#: The classical methods ``streamer evaluate --baselines`` fits per entity, by name in its results.
CLASSICAL = ("auto_ets", "theta")


def classical_forecasts(
    history: pd.DataFrame, horizon: int, season: int, console: Console | None = None
) -> dict[str, dict[str, F64]]:
    """AutoETS and (standard) Theta forecasts of every entity's next ``horizon`` points, fitted on
    its ``history`` alone with season length ``season`` (statsforecast; a series too short for a
    model gets the naive forecast): ``{method: {entity: forecast}}``."""
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
    )
    with np.errstate(all="ignore"):
        fc = sf.forecast(df=frame, h=horizon)
    out: dict[str, dict[str, F64]] = {name: {} for name in CLASSICAL}
    for uid, g in fc.groupby("unique_id", sort=False):
        out["auto_ets"][str(uid)] = g["AutoETS"].to_numpy(np.float64)
        out["theta"][str(uid)] = g["Theta"].to_numpy(np.float64)
    if console is not None:
        console.print(
            f"AutoETS and Theta fitted on {len(out['theta'])} entities in "
            f"{time.monotonic() - started:.1f}s"
        )
    return out
