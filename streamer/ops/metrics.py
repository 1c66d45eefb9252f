"""Prometheus metrics of one worker, and the HTTP endpoint that serves them.

Every worker has its own :class:`Metrics` (its own registry, so several workers can live in one
process, as in tests) and serves it at ``http://HOST:PORT/metrics`` (``STREAMER_METRICS__PORT``).
Everything is observed once per batch, never per event: the per-event latencies of a batch go into
their histogram in one numpy call (:class:`BulkHistogram`).

The names, as the README and ``deploy/grafana`` use them:

========================================  =========  ==============================================
``streamer_events_total``                 counter    events consumed (dead-lettered ones too)
``streamer_predictions_total``            counter    predictions sent (re-emitted ones too)
``streamer_reemitted_total``              counter    predictions sent again after a crash
``streamer_dead_letters_total{reason}``   counter    events sent to the dead-letter topic
``streamer_skipped_events_total``         counter    events the fence skipped (applied before)
``streamer_batches_total``                counter    batches delivered and committed
``streamer_batch_size``                   histogram  events per batch
``streamer_batch_wait_seconds``           histogram  time spent filling a batch after its first event
``streamer_step_seconds``                 histogram  model time per batch (all waves)
``streamer_redis_seconds{op}``            histogram  one Redis round trip: ``read`` or ``write``
``streamer_delivery_seconds``             histogram  sending a batch's outputs and committing it
``streamer_latency_seconds``              histogram  event produced (its Kafka timestamp) to its
                                                     output (prediction or dead letter)
                                                     acknowledged by Kafka
``streamer_consumer_lag{partition}``      gauge      events in the partition not yet committed
``streamer_assigned_partitions``          gauge      partitions this worker owns
``streamer_cache_hits_total``             counter    states read from the worker's cache
``streamer_cache_misses_total``           counter    states the cache did not have (read from Redis)
``streamer_cache_entities``               gauge      states in the cache
``streamer_cache_bytes``                  gauge      bytes of the states in the cache
``streamer_state_resets_total``           counter    stored states reset (model shape or policy)
``streamer_rejected_writes_total``        counter    state writes refused (the stored state changed)
``streamer_model_info{version}``          gauge      1 for the model version served
``streamer_model_switches_total``         counter    hot swaps to another model version
``streamer_redis_retries_total``          counter    Redis calls retried (an outage)
``streamer_kafka_retries_total``          counter    Kafka calls retried (an outage)
``streamer_commit_failures_total``        counter    commits refused (partitions moved on)
``streamer_worker_info{...}``             gauge      1, labelled with app id, model name, device,
                                                     processing guarantee
========================================  =========  ==============================================
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from streamer.schemas import DeadLetter
    from streamer.serve.predictor import BatchReport
    from streamer.state.cache import StateCache

__all__ = ["BulkHistogram", "Metrics", "serve_metrics"]

#: seconds: 100 µs to a minute
_TIME_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: events per batch: powers of two up to 4096
_SIZE_BUCKETS = tuple(float(2**k) for k in range(13))
#: end-to-end latency: 1 ms to 10 minutes (a worker catching up has minutes of it)
_LATENCY_BUCKETS = (*_TIME_BUCKETS[3:], 120.0, 300.0, 600.0)


class BulkHistogram(Collector):
    """A Prometheus histogram fed a whole array at a time (one ``searchsorted`` per batch instead
    of one ``observe`` call per event).

    >>> h = BulkHistogram("x_seconds", "doc", (0.1, 1.0))
    >>> h.observe_many(np.array([0.05, 0.5, 5.0]))
    >>> [(s.labels.get("le"), s.value) for s in next(iter(h.collect())).samples][:3]
    [('0.1', 1.0), ('1.0', 2.0), ('+Inf', 3.0)]
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]):
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(buckets, np.float64)
        self._counts = np.zeros(len(buckets) + 1, np.int64)  # the last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()  # the HTTP server's thread reads while the loop writes

    def observe_many(self, values: npt.NDArray[np.float64]) -> None:
        if not len(values):
            return
        # Prometheus buckets are upper bounds, inclusive: side="left" puts v == bound in it.
        idx = np.searchsorted(self.bounds, values, side="left")
        counts = np.bincount(idx, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            cum = np.cumsum(self._counts).astype(np.float64).tolist()
            total = self._sum
        buckets = [(repr(float(b)), c) for b, c in zip(self.bounds.tolist(), cum, strict=False)]
        buckets.append(("+Inf", cum[-1]))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)

    def describe(self) -> Iterable[Metric]:
        return self.collect()


class Metrics:
    """One worker's metrics, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry(auto_describe=True)
        self.events = Counter("streamer_events", "Events consumed.", registry=r)
        self.predictions = Counter("streamer_predictions", "Predictions sent.", registry=r)
        self.reemitted = Counter(
            "streamer_reemitted", "Predictions sent again after a crash (kept outputs).", registry=r
        )
        self.dead_letters = Counter(
            "streamer_dead_letters",
            "Events sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.skipped = Counter(
            "streamer_skipped_events",
            "Events skipped by the offset fence (applied before).",
            registry=r,
        )
        self.batches = Counter("streamer_batches", "Batches delivered and committed.", registry=r)
        self.batch_size = Histogram(
            "streamer_batch_size", "Events per batch.", buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_wait = Histogram(
            "streamer_batch_wait_seconds",
            "Time spent filling a batch after its first event arrived.",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.step = Histogram(
            "streamer_step_seconds",
            "Model time per batch (every wave of the batch).",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.redis = Histogram(
            "streamer_redis_seconds",
            "One Redis round trip of a batch: read (MGET) or write (compare-and-set).",
            ["op"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.delivery = Histogram(
            "streamer_delivery_seconds",
            "Sending a batch's outputs to Kafka and committing its offsets.",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.latency = BulkHistogram(
            "streamer_latency_seconds",
            "From an event's Kafka timestamp to its prediction acknowledged by Kafka.",
            _LATENCY_BUCKETS,
        )
        r.register(self.latency)
        self.lag = Gauge(
            "streamer_consumer_lag",
            "Events in the partition not committed yet (high watermark - committed offset).",
            ["partition"],
            registry=r,
        )
        self.assigned = Gauge(
            "streamer_assigned_partitions", "Partitions this worker owns.", registry=r
        )
        self.cache_hits = Counter(
            "streamer_cache_hits", "States read from the worker's cache.", registry=r
        )
        self.cache_misses = Counter(
            "streamer_cache_misses", "States the cache did not have.", registry=r
        )
        self.cache_entities = Gauge("streamer_cache_entities", "States in the cache.", registry=r)
        self.cache_bytes = Gauge(
            "streamer_cache_bytes", "Bytes of the states in the cache.", registry=r
        )
        self.resets = Counter(
            "streamer_state_resets",
            "Stored states reset to zeros (another model shape, or the reset policy).",
            registry=r,
        )
        self.out_of_vocabulary = Counter(
            "streamer_out_of_vocabulary_values",
            "Values of a next-event model's categorical columns that its vocabulary does not "
            "hold (null included), stepped as out-of-vocabulary.",
            ["column"],
            registry=r,
        )
        self.rejected = Counter(
            "streamer_rejected_writes",
            "State writes refused because the stored state changed since it was read.",
            registry=r,
        )
        self.model = Gauge(
            "streamer_model_info", "1 for the model version served.", ["version"], registry=r
        )
        self.switches = Counter(
            "streamer_model_switches", "Hot swaps to another model version.", registry=r
        )
        self.redis_retries = Counter(
            "streamer_redis_retries", "Redis calls retried during an outage.", registry=r
        )
        self.kafka_retries = Counter(
            "streamer_kafka_retries", "Kafka calls retried during an outage.", registry=r
        )
        self.commit_failures = Counter(
            "streamer_commit_failures",
            "Commits refused because the partitions moved to another worker.",
            registry=r,
        )
        self.worker = Gauge(
            "streamer_worker_info",
            "1; the labels describe the worker.",
            ["app_id", "model_name", "device", "guarantee"],
            registry=r,
        )
        self._version: str | None = None
        self._cache_seen = (0, 0)
        self._lagging: set[int] = set()  # partitions with a lag gauge

    def serving(self, version: str) -> None:
        """The model version served from now on."""
        if version == self._version:
            return
        if self._version is not None:
            self.model.remove(self._version)
            self.switches.inc()
        self.model.labels(version).set(1)
        self._version = version

    def batch(
        self,
        *,
        size: int,
        report: BatchReport,
        predictions: int,
        dead_letters: Iterable[DeadLetter],
        latencies: npt.NDArray[np.float64],
        delivery_s: float,
    ) -> None:
        """A batch delivered and committed."""
        self.batches.inc()
        self.events.inc(size)
        self.batch_size.observe(size)
        self.predictions.inc(predictions)
        self.reemitted.inc(report.reemitted)
        self.skipped.inc(report.skipped)
        self.resets.inc(report.resets)
        self.rejected.inc(report.rejected)
        for column, n in report.out_of_vocabulary.items():
            self.out_of_vocabulary.labels(column).inc(n)
        counts: dict[str, int] = {}
        for d in dead_letters:
            counts[d.reason] = counts.get(d.reason, 0) + 1
        for reason, n in counts.items():
            self.dead_letters.labels(reason).inc(n)
        self.delivery.observe(delivery_s)
        self.latency.observe_many(latencies)

    def stepped(self, report: BatchReport) -> None:
        """A batch stepped and saved: its model and Redis times."""
        if report.step_s is not None:
            self.step.observe(report.step_s)
        if report.read_s is not None:
            self.redis.labels("read").observe(report.read_s)
        if report.write_s is not None:
            self.redis.labels("write").observe(report.write_s)

    def cache(self, cache: StateCache | None) -> None:
        """The cache's counters since the last call, and its size."""
        if cache is None:
            return
        hits, misses = self._cache_seen
        self.cache_hits.inc(cache.hits - hits)
        self.cache_misses.inc(cache.misses - misses)
        self._cache_seen = (cache.hits, cache.misses)
        self.cache_entities.set(len(cache))
        self.cache_bytes.set(cache.nbytes)

    def partitions(self, lag: Mapping[int, int], owned: int) -> None:
        """The number of owned partitions and their lag (those it is known of); partitions no
        longer owned are dropped."""
        self.assigned.set(owned)
        for p in self._lagging.difference(lag):
            self.lag.remove(str(p))
        self._lagging = set(lag)
        for p, n in lag.items():
            self.lag.labels(str(p)).set(n)


def serve_metrics(metrics: Metrics, host: str, port: int) -> int:
    """Serve ``/metrics`` from a daemon thread; returns the port (``port`` 0: a free one)."""
    server, _thread = start_http_server(port, host, registry=metrics.registry)
    return int(server.server_port)
