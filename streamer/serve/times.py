"""The times a forecast's steps fall on: the event's time plus 1..H periods of the series'
frequency (inferred in training and kept in the model's spec).

A batch's times are parsed and shifted by pandas at once, column by column (one vectorised shift
per step ahead), and written as ISO 8601 text by numpy: no per-event Python but the final join.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import Tick

__all__ = ["forecast_times", "infer_freq", "parse_times"]


def infer_freq(ds: pd.Series, ids: pd.Series, most: int = 200) -> str | None:
    """The frequency most of the series (up to ``most`` of them, of at least 3 points) share,
    as a pandas alias; None when none could be told. A series with a few irregular steps (a
    sensor's missing hours, clocks changed for daylight saving) has the fixed step that at least
    95% of its steps take.

    >>> ds = pd.Series(pd.to_datetime(["2020-01-01", "2020-02-01", "2020-03-01"] * 2))
    >>> infer_freq(ds, pd.Series(["a"] * 3 + ["b"] * 3))
    'MS'
    >>> hours = pd.Series(pd.date_range("2020-01-01", periods=50, freq="h").delete(20))
    >>> infer_freq(hours, pd.Series(["a"] * 49))
    'h'
    """
    seen: dict[str, int] = {}
    for _, times in list(ds.groupby(ids.to_numpy(), sort=False))[:most]:
        if len(times) < 3:
            continue
        index = pd.DatetimeIndex(times.sort_values())
        try:
            freq = pd.infer_freq(index)
        except (TypeError, ValueError):
            freq = None
        if not freq:
            freq = _dominant_step(index)
        if freq:
            seen[freq] = seen.get(freq, 0) + 1
    return max(seen, key=seen.__getitem__) if seen else None


def _dominant_step(index: pd.DatetimeIndex) -> str | None:
    """The alias of the fixed step that at least 95% of the steps of ``index`` take, if any."""
    steps = pd.Series(index[1:] - index[:-1])
    if steps.empty:
        return None
    counts = steps.value_counts()
    step = counts.index[0]
    if counts.iloc[0] < 0.95 * len(steps) or step <= pd.Timedelta(0):
        return None
    try:
        return str(pd.tseries.frequencies.to_offset(step).freqstr)
    except ValueError:
        return None


def forecast_times(ds: Sequence[str], freq: str, horizon: int) -> list[bytes]:
    """Each event time's next ``horizon`` times at ``freq``, as a JSON array (``[]`` for a time
    that does not parse): dates when its steps fall on midnights, else seconds (or
    milliseconds).

    >>> forecast_times(["2020-01-01", "bad", "2020-12-01"], "MS", 2)
    [b'["2020-02-01","2020-03-01"]', b'[]', b'["2021-01-01","2021-02-01"]']
    >>> forecast_times(["2020-01-01T10:30:00", "2020-01-01"], "h", 2)
    [b'["2020-01-01T11:30:00","2020-01-01T12:30:00"]', b'["2020-01-01T01:00:00","2020-01-01T02:00:00"]']
    """
    if not len(ds):
        return []
    times = parse_times(ds)
    ok = times.notna().to_numpy()
    if not ok.any():
        return [b"[]"] * len(ds)
    known = pd.DatetimeIndex(times[ok])
    offset = to_offset(freq)
    steps: np.ndarray[Any, np.dtype[np.datetime64]] = np.empty(
        (len(known), horizon), "datetime64[ns]"
    )
    if isinstance(offset, Tick):  # a fixed length: one broadcast addition
        step = np.timedelta64(int(offset.nanos), "ns")
        steps[:] = known.to_numpy("datetime64[ns]")[:, None] + step * np.arange(1, horizon + 1)
    else:  # calendar offsets (months, weeks, business days): one vectorised shift per step
        for k in range(horizon):
            steps[:, k] = (known + (k + 1) * offset).to_numpy("datetime64[ns]")
    out = [b"[]"] * len(ds)
    if not horizon:
        return out
    ns = steps.view(np.int64)
    # each forecast as precise as it needs: dates, seconds, or milliseconds
    dates = (ns % 86_400_000_000_000 == 0).all(axis=1)
    seconds = ~dates & (ns % 1_000_000_000 == 0).all(axis=1)
    rows = np.flatnonzero(ok)
    unit: Literal["D", "s", "ms"]
    for unit, which in (("D", dates), ("s", seconds), ("ms", ~dates & ~seconds)):
        if not which.any():
            continue
        text = orjson.dumps(np.datetime_as_string(steps[which], unit=unit).tolist())
        for i, row in zip(rows[which].tolist(), text[2:-2].split(b"],["), strict=True):
            out[i] = b"[" + row + b"]"
    return out


def parse_times(ds: Sequence[str]) -> pd.Series:
    """The times as naive datetimes, NaT where one does not parse: a time with an offset in UTC,
    one without as it is, each on its own, whatever else is in the batch (times with several
    offsets, a clock change's, side by side in one batch once stopped a worker).

    >>> parse_times(["2024-03-31T01:30+01:00", "2024-03-31T03:30+02:00", "2024-03-31T05:00", "x"])
    0   2024-03-31 00:30:00
    1   2024-03-31 01:30:00
    2   2024-03-31 05:00:00
    3                   NaT
    dtype: datetime64[ns]
    """
    text = pd.Series(list(ds), dtype=object)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # (pandas on mixed offsets)
        try:
            fast = pd.to_datetime(text, errors="coerce", format="ISO8601")
        except (ValueError, TypeError):
            fast = None
    if fast is not None and fast.dtype == "datetime64[ns]":
        return fast  # no offsets: the usual batch
    # Offsets: the times of each ending (offset, or none) together, so pandas never reads one
    # time at another's offset (it reads naive times among offsets at the last one it saw)
    ending = text.str.extract(r"([Zz]|[+-]\d{2}(?::?\d{2})?)$", expand=False).fillna("")
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    for _, sub in text.groupby(ending, sort=False):
        got = _naive(sub)
        if got is None:  # times unlike their ending (an offset the pattern missed): one by one
            got = pd.Series([_one(v) for v in sub], index=sub.index, dtype="datetime64[ns]")
        out[sub.index] = got
    return out


def _naive(text: pd.Series) -> pd.Series | None:
    """Times of one offset (or none) as naive datetimes, an offset's in UTC; None when pandas
    found several offsets among them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            got = pd.to_datetime(text, errors="coerce", format="ISO8601")
    except (ValueError, TypeError):
        return None
    if isinstance(got.dtype, pd.DatetimeTZDtype):
        return got.dt.tz_convert(None)
    return got if got.dtype == "datetime64[ns]" else None


def _one(text: str) -> pd.Timestamp:
    """One time on its own (an offset in UTC), NaT if it does not parse."""
    got = _naive(pd.Series([text], dtype=object))
    return pd.NaT if got is None else got.iloc[0]  # type: ignore[return-value]
