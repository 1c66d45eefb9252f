"""Worker metrics as the dashboard reads them: parsed from the Prometheus text format, turned into
per-interval deltas, summed over workers, and latency quantiles estimated from bucket deltas.

Pure functions, no I/O: :class:`streamer.ops.dashboard.collector.Collector` feeds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "Interval",
    "Scrape",
    "counter_deltas",
    "histogram_quantile",
    "interval_of",
    "mean_of",
    "merge_buckets",
    "parse_metrics",
]


#: the counters read, by their sample name; histogram sums and counts are counters too
_COUNTERS = {
    "streamer_events_total": "events",
    "streamer_predictions_total": "predictions",
    "streamer_batch_size_sum": "batch_size_sum",
    "streamer_batch_size_count": "batch_size_count",
    "streamer_step_seconds_sum": "step_sum",
    "streamer_step_seconds_count": "step_count",
}
_DEAD = "dead_letters:"
_LATENCY = "latency_le:"


@dataclass
class Scrape:
    """What the dashboard reads from one worker's ``/metrics``.

    Every monotonic series (counters, histogram buckets, sums and counts) sits in ``counters``
    under a flat name, so that one rule (:func:`counter_deltas`) turns all of them into deltas.
    """

    counters: dict[str, float] = field(default_factory=dict)
    lag: dict[int, float] = field(default_factory=dict)
    assigned: float | None = None
    model_version: str | None = None


def parse_metrics(text: str) -> Scrape:
    """
    >>> s = parse_metrics('''streamer_events_total 12.0
    ... streamer_dead_letters_total{reason="invalid_json"} 2.0
    ... streamer_latency_seconds_bucket{le="0.01"} 7.0
    ... streamer_latency_seconds_bucket{le="+Inf"} 10.0
    ... streamer_consumer_lag{partition="3"} 5.0
    ... streamer_model_info{version="v1"} 1.0
    ... ''')
    >>> sorted(s.counters.items()), s.lag, s.model_version
    ([('dead_letters:invalid_json', 2.0), ('events', 12.0), ('latency_le:+Inf', 10.0), \
('latency_le:0.01', 7.0)], {3: 5.0}, 'v1')
    """
    out = Scrape()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in _COUNTERS:
                out.counters[_COUNTERS[s.name]] = s.value
            elif s.name == "streamer_dead_letters_total":
                out.counters[_DEAD + s.labels["reason"]] = s.value
            elif s.name == "streamer_latency_seconds_bucket":
                out.counters[_LATENCY + s.labels["le"]] = s.value
            elif s.name == "streamer_consumer_lag":
                out.lag[int(s.labels["partition"])] = s.value
            elif s.name == "streamer_assigned_partitions":
                out.assigned = s.value
            elif s.name == "streamer_model_info" and s.value:
                out.model_version = s.labels["version"]
    return out


def counter_deltas(prev: Mapping[str, float], cur: Mapping[str, float]) -> dict[str, float]:
    """What each counter of one worker counted between two scrapes.

    A counter that went down (or vanished) means the worker restarted and its counters began
    again from zero: then all it counts now is new, as Prometheus' ``rate()`` takes a reset.

    >>> counter_deltas({"a": 5.0, "b": 1.0}, {"a": 7.0, "b": 1.0, "c": 2.0})
    {'a': 2.0, 'b': 0.0, 'c': 2.0}
    >>> counter_deltas({"a": 5, "b": 1}, {"a": 3})
    {'a': 3}
    """
    if any(cur.get(k, -1.0) < v for k, v in prev.items()):
        return dict(cur)
    return {k: v - prev.get(k, 0.0) for k, v in cur.items()}


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q``-quantile of the observations in cumulative buckets ``(upper bound, count)``,
    sorted and ending with ``+Inf``, as PromQL's ``histogram_quantile`` estimates it: linear
    within the bucket the rank falls in, the first bucket starting at 0, and the highest finite
    bound when the rank falls in ``+Inf``. None when there are no observations.

    >>> histogram_quantile(0.5, [(1.0, 0), (2.0, 10), (float("inf"), 10)])
    1.5
    >>> histogram_quantile(0.5, [(1.0, 4), (2.0, 4), (4.0, 8), (float("inf"), 8)])
    1.0
    >>> histogram_quantile(0.99, [(1.0, 0), (2.0, 10), (float("inf"), 20)])
    2.0
    >>> histogram_quantile(0.5, [(1.0, 0), (float("inf"), 0)]) is None
    True
    """
    if len(buckets) < 2 or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for i, (upper, count) in enumerate(buckets):
        if count >= rank and i < len(buckets) - 1:
            if i == 0 and upper <= 0:
                return upper
            inside = count - below
            return upper if inside <= 0 else lower + (upper - lower) * (rank - below) / inside
        if i < len(buckets) - 1:
            lower, below = upper, count
    return lower  # in the +Inf bucket


def merge_buckets(many: Iterable[Sequence[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Histograms of the same buckets added up (several workers, several intervals).

    >>> merge_buckets([[(1.0, 2), (float("inf"), 3)], [(1.0, 1), (float("inf"), 1)]])
    [(1.0, 3), (inf, 4)]
    """
    total: dict[float, float] = {}
    for buckets in many:
        for upper, count in buckets:
            total[upper] = total.get(upper, 0) + count
    return sorted(total.items())


def mean_of(pairs: Iterable[tuple[float, float]]) -> float | None:
    """The mean of observations given as ``(sum, count)`` pairs; None without any.

    >>> mean_of([(10.0, 2), (2.0, 2)]), mean_of([(0.0, 0)])
    (3.0, None)
    """
    total = n = 0.0
    for s, c in pairs:
        total += s
        n += c
    return total / n if n > 0 else None


@dataclass(frozen=True)
class Interval:
    """What the workers did over one interval, summed over workers: rates per second, the
    cumulative latency buckets of the events they answered in it, and ``(sum, count)`` of the
    batch sizes and model step times they observed."""

    events_s: float
    predictions_s: float
    dead_letters_s: dict[str, float]
    latency: list[tuple[float, float]]
    batch_sizes: tuple[float, float] = (0.0, 0.0)
    step_times: tuple[float, float] = (0.0, 0.0)


def interval_of(deltas: Sequence[tuple[Mapping[str, float], float]]) -> Interval:
    """Sum what each worker counted over its own interval ``(counter deltas, seconds)``.

    Rates are per worker first (a worker missed by one scrape has a longer interval), then added;
    bucket counts, sums and counts are added as they are.

    >>> iv = interval_of([({"events": 10, "step_sum": 0.2, "step_count": 4}, 1.0),
    ...                   ({"events": 30, "dead_letters:invalid_json": 3}, 2.0)])
    >>> iv.events_s, iv.dead_letters_s, mean_of([iv.step_times]), mean_of([iv.batch_sizes])
    (25.0, {'invalid_json': 1.5}, 0.05, None)
    """
    rate: dict[str, float] = {}
    total: dict[str, float] = {}
    for d, dt in deltas:
        for k, v in d.items():
            total[k] = total.get(k, 0.0) + v
            if dt > 0:
                rate[k] = rate.get(k, 0.0) + v / dt
    latency = sorted(
        (float(k[len(_LATENCY) :]), v) for k, v in total.items() if k.startswith(_LATENCY)
    )
    return Interval(
        events_s=rate.get("events", 0.0),
        predictions_s=rate.get("predictions", 0.0),
        dead_letters_s={k[len(_DEAD) :]: v for k, v in rate.items() if k.startswith(_DEAD)},
        latency=latency,
        batch_sizes=(total.get("batch_size_sum", 0.0), total.get("batch_size_count", 0.0)),
        step_times=(total.get("step_sum", 0.0), total.get("step_count", 0.0)),
    )
