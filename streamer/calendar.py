"""Calendar inputs: where an event's time falls in the day, the week and the year, as model inputs.

Each named position is two inputs, the sine and cosine of its angle on its cycle (so 23:00 is
next to 00:00 and Sunday to Monday), read from the event's ``ds`` by the same function in
training, in the offline pass and in the stream, so streamed predictions stay equal to offline
ones:

- ``hour``: the time of day, hours and minutes (cycle 24 hours);
- ``weekday``: the day of the week, Monday first (cycle 7 days);
- ``month``: the month of the year (cycle 12 months).

They are asked for (``streamer train --calendar hour,weekday``), not on by default: on the hourly
pedestrian panel, whose daily cycle the seasonal components (:mod:`streamer.seasonal`) already
keep, the hour and the weekday left the forecasts' MASE where it was (over 28 held-out days and
two seeds, 0.998 against 1.003).

Times are parsed as ISO 8601 (:func:`streamer.serve.times.parse_times`); one with an offset is
taken in UTC. A model with calendar inputs cannot step an event whose ``ds`` is not a time: the
worker dead-letters it (``not_a_time``) before it touches state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import Tick

from streamer.errors import DataError

__all__ = ["CYCLES", "check", "inputs", "per_day", "times_ok"]

F64 = npt.NDArray[np.float64]

#: Each position's cycle, in its own units.
CYCLES = {"hour": 24.0, "weekday": 7.0, "month": 12.0}
_DAY_NS = 86_400 * 10**9


def check(names: Sequence[str]) -> tuple[str, ...]:
    """The names as a tuple, or a DataError naming what is unknown or given twice.

    >>> check(["hour", "weekday"])
    ('hour', 'weekday')
    >>> check(["hour", "week"])
    Traceback (most recent call last):
    ...
    streamer.errors.DataError: unknown calendar input 'week' (hour, weekday, month)
    """
    for n in names:
        if n not in CYCLES:
            raise DataError(f"unknown calendar input {n!r} ({', '.join(CYCLES)})")
    if len(set(names)) != len(names):
        raise DataError(f"calendar inputs given twice: {', '.join(names)}")
    return tuple(names)


def per_day(freq: str | None) -> int:
    """Points per day of data sampled more often than daily at ``freq``; 0 otherwise.

    >>> per_day("h"), per_day("15min"), per_day("D"), per_day("MS")
    (24, 96, 0, 0)
    """
    if not freq:
        return 0
    try:
        offset = to_offset(freq)
    except ValueError:
        return 0
    if isinstance(offset, Tick) and 0 < offset.nanos < _DAY_NS:
        return int(_DAY_NS // offset.nanos)
    return 0


def _positions(times: pd.Series, name: str) -> F64:
    dt = times.dt
    if name == "hour":
        pos = dt.hour + dt.minute / 60.0
    elif name == "weekday":
        pos = dt.dayofweek
    else:
        pos = dt.month - 1
    return np.asarray(pos, np.float64)


def times_ok(ds: Sequence[str]) -> npt.NDArray[np.bool_]:
    """Which of the times parse."""
    from streamer.serve.times import parse_times

    return parse_times(ds).notna().to_numpy()


def inputs(ds: Sequence[str], names: Sequence[str]) -> F64:
    """The calendar inputs ``(N, 2·len(names))`` of the times ``ds``: for each name its sine,
    then its cosine. A DataError if a time does not parse.

    >>> inputs(["2024-01-01T06:00:00", "2024-01-06T18:30:00"], ["hour", "weekday"]).round(3)
    array([[ 1.   ,  0.   ,  0.   ,  1.   ],
           [-0.991,  0.131, -0.975, -0.223]])
    """
    from streamer.serve.times import parse_times

    out = np.empty((len(ds), 2 * len(names)), np.float64)
    if not names or not len(ds):
        return out
    times = parse_times(ds)
    bad = times.isna().to_numpy()
    if bad.any():
        first = ds[int(np.flatnonzero(bad)[0])]
        raise DataError(f"ds {first!r} is not an ISO 8601 time (calendar inputs are read from it)")
    for i, name in enumerate(names):
        angle = (2 * np.pi / CYCLES[name]) * _positions(times, name)
        out[:, 2 * i] = np.sin(angle)
        out[:, 2 * i + 1] = np.cos(angle)
    return out
