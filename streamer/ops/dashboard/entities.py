"""Each entity's last predictions, as the entity chart draws them: its values with the one-step
forecasts overlaid, and the latest forecast into the future (a classifier's: its probabilities;
a next-event model's: each event's surprise and rank, and the values it names next). Pure, no
I/O."""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streamer.schemas import Prediction

__all__ = ["Cursor", "EntitySeries", "EntityStore", "Point"]


def _epoch(ds: str) -> float | None:
    """``ds`` as Unix seconds when it is an ISO 8601 date or time (naive: UTC), else None.

    >>> _epoch("2020-01-02"), _epoch("2020-01-02T00:00:01+00:00"), _epoch("week 3")
    (1577923200.0, 1577923201.0, None)
    """
    try:
        t = datetime.fromisoformat(ds)
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class Cursor:
    """How far a page has an entity's series: the last sequence number sent, on which x axis,
    and the epoch of the series (it starts again when the model changes kind)."""

    seq: int
    axis: str
    epoch: int


@dataclass(slots=True)
class Point:
    """One prediction, as the entity chart needs it."""

    seq: int  # 1, 2, ... in the order the dashboard read the entity's predictions
    ds: str
    t: float | None  # ds in Unix seconds, when it is a date or time
    y: float
    step: int
    version: str
    #: the one-step forecast for this event, made at the event before (None when the dashboard
    #: did not see that event): the value to overlay on ``y``
    prior: float | None
    #: a forecaster's forecast for the next event, a classifier's probabilities, or a next-event
    #: model's surprise and rank of the event (NaN: none)
    out: tuple[float, ...]


class EntitySeries:
    """The last ``max_points`` predictions of one entity, repeats dropped.

    A prediction made at event *t* forecasts the next ``horizon`` values, so the value to draw
    over event *t*'s ``y`` is the first value of the forecast made at *t - 1*: it is stored with
    the point (``prior``) when the point arrives, as long as the step before is the last point.

    All events of an entity are in one partition, in offset order, so a prediction at or below
    the last offset of that partition is a repeat (at-least-once delivery after a crash).
    """

    def __init__(self, max_points: int = 500):
        self.points: deque[Point] = deque(maxlen=max_points)
        self._last: tuple[int, int] = (-1, -1)  # (partition, offset) of the last point
        self.classes: tuple[str, ...] = ()
        self.forecast: tuple[float, ...] = ()  # the latest full forecast
        self.names: tuple[str, ...] | None = None  # a next-event model's latest named values
        #: its widest prediction interval: (level, lows, highs), or None
        self.interval: tuple[int, tuple[float, ...], tuple[float, ...]] | None = None
        self.seq = 0  # points ever added
        self.epoch = 0  # times the series started again

    def add(self, p: Prediction) -> bool:
        """Append ``p``; False for a repeat."""
        partition, offset = self._last
        if p.partition == partition and p.offset <= offset:
            return False
        self._last = (p.partition, p.offset)
        names = p.next if p.next or p.surprise is not None else None  # (a next-event model's)
        if p.classes != self.classes or (names is None) != (self.names is None):
            self.points.clear()  # another kind of model: the points before do not compare
            self.classes = p.classes
            self.epoch += 1
        self.names = names
        last = self.points[-1] if self.points else None
        prior = None
        plain = not p.classes and names is None  # a forecaster
        if plain and last is not None and last.step + 1 == p.step and last.out:
            prior = last.out[0]
        self.seq += 1
        out: tuple[float, ...]
        if names is not None:
            out = (
                math.nan if p.surprise is None else p.surprise,
                math.nan if p.rank is None else float(p.rank),
            )
        else:
            out = p.values if p.classes else p.values[:1]
        self.points.append(
            Point(self.seq, p.ds, _epoch(p.ds), p.y, p.step, p.model_version, prior, out)
        )
        self.forecast = p.values if plain or names is not None else ()
        widest = max(p.intervals, default=None)
        self.interval = None if widest is None else (widest, *p.intervals[widest])
        return True

    def times(self) -> list[float] | None:
        """The points' ``ds`` in Unix seconds when all are dates or times and strictly
        increasing (the points can be drawn over time), else None."""
        ts: list[float] = []
        for p in self.points:
            if p.t is None or (ts and p.t <= ts[-1]):
                return None
            ts.append(p.t)
        return ts

    def view(self, entity: str, after: Cursor | None = None) -> tuple[dict[str, Any], Cursor]:
        """The points a page that has the series up to ``after`` lacks, as columns, and the
        cursor to pass next time. All the points (``full``) when ``after`` is None, when points
        it lacks were dropped since, when the x axis changed, or when the series started again.

        ``x`` is Unix seconds on a time axis, else the sequence number; ``future_x`` and
        ``future`` place the latest forecast after the last point, spaced like the last points,
        and ``future_lo``, ``future_hi`` its widest interval (``level``; empty without one). A
        next-event model's view has ``next``, the values its latest prediction names (``future``:
        their probabilities, not placed on the x axis), and each point's ``surprise`` and
        ``rank`` (None: none).
        """
        pts = list(self.points)
        times = self.times()
        mode = "seq" if times is None else "time"
        full = (
            after is None
            or after.axis != mode
            or after.epoch != self.epoch
            or not pts
            or after.seq < pts[0].seq - 1
        )
        new = pts if full or after is None else [p for p in pts if p.seq > after.seq]
        xs = [float(p.seq) for p in pts] if times is None else times
        future_x: list[float] = []
        if self.forecast and xs and self.names is None:
            tail = xs[-13:]
            gaps = sorted(b - a for a, b in itertools.pairwise(tail))
            step = gaps[len(gaps) // 2] if gaps else (86400.0 if times else 1.0)
            future_x = [xs[-1] + step * (k + 1) for k in range(len(self.forecast))]
        view: dict[str, Any] = {
            "entity": entity,
            "full": full,
            "axis": mode,
            "seq": self.seq,
            "max_points": self.points.maxlen,
            "classes": list(self.classes),
            "x": xs[len(pts) - len(new) :],
            "ds": [p.ds for p in new],
            "y": [p.y for p in new],
            "prior": [p.prior for p in new],
            "step": [p.step for p in new],
            "version": [p.version for p in new],
            "future_x": future_x,
            "future": list(self.forecast),
            "level": self.interval[0] if self.interval else None,
            "future_lo": list(self.interval[1]) if self.interval else [],
            "future_hi": list(self.interval[2]) if self.interval else [],
        }
        if self.classes:
            view["probs"] = [[p.out[i] for p in new] for i in range(len(self.classes))]
        if self.names is not None:  # the named values and their probabilities, not a forecast
            view["next"] = list(self.names)
            view["surprise"] = [None if p.out[0] != p.out[0] else p.out[0] for p in new]
            view["rank"] = [None if p.out[1] != p.out[1] else int(p.out[1]) for p in new]
        return view, Cursor(self.seq, mode, self.epoch)


class EntityStore:
    """The series of the most recently updated entities: at most ``max_entities`` of them and
    ``max_total_points`` points in all (a point takes about 320 bytes: a million of them, about
    320 MB), the least recently updated entities dropped first."""

    def __init__(
        self,
        max_entities: int = 100_000,
        max_points: int = 500,
        max_total_points: int = 1_000_000,
    ):
        self.max_entities = max_entities
        self.max_points = max_points
        self.max_total_points = max_total_points
        self._series: OrderedDict[str, EntitySeries] = OrderedDict()
        self.points = 0  # in all series
        self.read = 0  # predictions read
        self.undecodable = 0

    def __len__(self) -> int:
        return len(self._series)

    def add(self, p: Prediction) -> None:
        self.read += 1
        s = self._series.get(p.unique_id)
        if s is None:
            s = self._series[p.unique_id] = EntitySeries(self.max_points)
        else:
            self._series.move_to_end(p.unique_id)
        before = len(s.points)
        s.add(p)
        self.points += len(s.points) - before
        while len(self._series) > 1 and (
            len(self._series) > self.max_entities or self.points > self.max_total_points
        ):
            _, dropped = self._series.popitem(last=False)
            self.points -= len(dropped.points)

    def get(self, entity: str) -> EntitySeries | None:
        return self._series.get(entity)

    def search(self, text: str, limit: int = 20) -> list[str]:
        """Entity ids that start with ``text``, then those that contain it; sorted within each."""
        text = text.strip()
        if not text:
            return heapq.nsmallest(limit, self._series)
        starts = sorted(e for e in self._series if e.startswith(text))
        if len(starts) >= limit:
            return starts[:limit]
        within = sorted(e for e in self._series if text in e and not e.startswith(text))
        return (starts + within)[:limit]
