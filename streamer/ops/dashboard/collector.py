"""Once a second: every live worker's metrics, the lag, and ten minutes of history of both."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streamer.ops.dashboard.kafka import KafkaView
from streamer.ops.dashboard.rates import (
    Interval,
    Scrape,
    counter_deltas,
    histogram_quantile,
    interval_of,
    mean_of,
    merge_buckets,
    parse_metrics,
)
from streamer.ops.presence import live_workers
from streamer.settings import Settings

__all__ = ["Collector", "Tick"]


@dataclass
class _Worker:
    """A worker the dashboard scrapes, and how the last scrape went."""

    worker_id: str
    url: str | None
    host: str = ""
    pid: int | None = None
    model_version: str | None = None
    partitions: list[int] = field(default_factory=list)
    last: Scrape | None = None
    last_at: float = 0.0  # monotonic time of ``last``
    ok_ms: int | None = None  # wall time of the last good scrape
    error: str | None = None
    events_s: float | None = None
    #: found in Redis (host, pid, partitions known), not named with ``--metrics``
    announced: bool = False

    def as_json(self) -> dict[str, Any]:
        lag = sum(self.last.lag.values()) if self.last else None
        status = "ok" if self.error is None and self.last else (self.error or "not scraped yet")
        if self.url is None:
            status = "no metrics endpoint"
        return {
            "id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "url": self.url,
            "model_version": self.model_version,
            "partitions": self.partitions,
            "events_s": self.events_s,
            "lag": lag,
            "ok": self.error is None and self.last is not None,
            "status": status,
            "ok_ms": self.ok_ms,
        }


@dataclass
class Tick:
    """One period of the history: what the workers did in it, and the lag at its end."""

    t: float
    #: None when no worker could be scraped twice in a row: the rates are unknown, not 0
    work: Interval | None
    lag: int | None
    lag_partitions: dict[int, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        w = self.work
        step = mean_of([w.step_times]) if w else None
        return {
            "t": self.t,
            "events": w.events_s if w else None,
            "predictions": w.predictions_s if w else None,
            "dead": w.dead_letters_s if w else {},
            "dead_total": sum(w.dead_letters_s.values()) if w else None,
            "p50": histogram_quantile(0.5, w.latency) if w else None,
            "p95": histogram_quantile(0.95, w.latency) if w else None,
            "p99": histogram_quantile(0.99, w.latency) if w else None,
            "batch": mean_of([w.batch_sizes]) if w else None,
            "step_ms": None if step is None else step * 1000,
            "lag": self.lag,
        }


class _Pulse:
    """Wakes every waiter at once (the pages' streams), each time the collector ticks."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


class Collector:
    """Scrapes the workers and reads the lag every ``period_s``; keeps ``history_s`` of it."""

    def __init__(
        self,
        settings: Settings,
        kafka: KafkaView,
        redis: aioredis.Redis | None,
        metrics_urls: Sequence[str] = (),
        *,
        period_s: float = 1.0,
        history_s: float = 600.0,
    ):
        self.settings = settings
        self.kafka = kafka
        self.redis = redis
        self.period_s = period_s
        self.history: deque[Tick] = deque(maxlen=int(history_s / period_s))
        self.workers: dict[str, _Worker] = {
            urlsplit(u).netloc or u: _Worker(urlsplit(u).netloc or u, u) for u in metrics_urls
        }
        self.discovery = "--metrics" if metrics_urls else "redis"
        self.discovery_error: str | None = None
        self.lag_source: str | None = None
        self.lag_error: str | None = None
        self.pulse = _Pulse()
        self.ticks = 0
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(0.2, self.period_s * 0.8))
        async with aiohttp.ClientSession(timeout=timeout) as self._session:
            loop = asyncio.get_running_loop()
            next_at = loop.time()
            while True:
                await self.tick()
                next_at = max(next_at + self.period_s, loop.time())
                await asyncio.sleep(next_at - loop.time())

    async def tick(self) -> None:
        if self.redis is not None:
            await self._discover(self.redis)
        workers = list(self.workers.values())
        scraped, lag = await asyncio.gather(
            asyncio.gather(*(self._scrape(w) for w in workers)), self._kafka_lag()
        )
        deltas = [d for d in scraped if d is not None]
        if lag is None:  # from the workers' gauges, as of their last batch
            gauges = [w.last.lag for w in workers if w.last is not None and w.error is None]
            lag = {int(p): int(n) for g in gauges for p, n in g.items()} if gauges else None
            self.lag_source = "workers" if gauges else None
        unknown = bool(workers) and not deltas  # every worker failed or is new: no rate
        self.history.append(
            Tick(
                t=time.time(),
                work=None if unknown else interval_of(deltas),
                lag=None if lag is None else sum(lag.values()),
                lag_partitions=lag or {},
            )
        )
        self.ticks += 1
        self.pulse.fire()

    def history_json(self) -> dict[str, Any]:
        """The history as columns, as the page's charts take them."""
        ticks = [t.as_json() for t in self.history]
        cols: dict[str, Any] = (
            {k: [t[k] for t in ticks] for k in ticks[0] if k != "dead"} if ticks else {}
        )
        reasons = sorted({r for t in ticks for r in t["dead"]})
        cols["dead"] = {
            r: [t["dead"].get(r, 0.0 if t["events"] is not None else None) for t in ticks]
            for r in reasons
        }
        return cols

    def summary(self, window_s: float = 60.0) -> dict[str, Any]:
        """The figures of the page's top row: the rates of the last second, the latency
        quantiles and dead letters over the last ``window_s``, the lag now."""
        recent = list(self.history)[-max(1, int(window_s / self.period_s)) :]
        last = recent[-1] if recent else None
        work = [t.work for t in recent if t.work is not None]
        buckets = merge_buckets(w.latency for w in work)
        step = mean_of(w.step_times for w in work)
        return {
            "events_s": last.work.events_s if last and last.work else None,
            "predictions_s": last.work.predictions_s if last and last.work else None,
            "p50": histogram_quantile(0.5, buckets),
            "p95": histogram_quantile(0.95, buckets),
            "p99": histogram_quantile(0.99, buckets),
            "dead_letters_s": (
                sum(sum(w.dead_letters_s.values()) for w in work) / len(work) if work else None
            ),
            "batch_mean": mean_of(w.batch_sizes for w in work),
            "step_ms": None if step is None else step * 1000,
            "lag": last.lag if last else None,
            "lag_partitions": last.lag_partitions if last else {},
            "lag_source": self.lag_source,
            "window_s": window_s,
        }

    async def _discover(self, redis: aioredis.Redis) -> None:
        """The live workers from their announcements; a Redis outage keeps the last list."""
        try:
            infos = await live_workers(redis, self.settings.app_id)
        except (RedisError, OSError) as exc:
            self.discovery_error = f"cannot read the workers from Redis: {exc}"
            return
        self.discovery_error = None
        seen = {}
        for info in infos:
            w = self.workers.get(info.worker_id)
            if w is None or w.url != info.metrics_url:  # new, or restarted on another port
                w = _Worker(info.worker_id, info.metrics_url, announced=True)
            w.host, w.pid = info.host, info.pid
            w.model_version, w.partitions = info.model_version, info.partitions
            seen[info.worker_id] = w
        self.workers = seen

    async def _scrape(self, w: _Worker) -> tuple[dict[str, float], float] | None:
        """Scrape one worker: its counter deltas since its last scrape and the seconds between;
        None for its first scrape (its counters hold all it did before the dashboard looked) or
        when it failed."""
        if w.url is None or self._session is None:
            return None
        try:
            async with self._session.get(w.url) as resp:
                resp.raise_for_status()
                text = await resp.text()
            cur = parse_metrics(text)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            w.error = f"cannot scrape {w.url}: {exc or type(exc).__name__}"
            w.events_s = None
            return None
        now = time.monotonic()
        prev, prev_at = w.last, w.last_at
        w.last, w.last_at, w.error, w.ok_ms = cur, now, None, int(time.time() * 1000)
        if cur.model_version:
            w.model_version = cur.model_version
        if not w.announced:
            w.partitions = sorted(cur.lag)
        if prev is None:
            return None
        d = counter_deltas(prev.counters, cur.counters)
        dt = max(now - prev_at, 1e-6)
        w.events_s = d.get("events", 0.0) / dt
        return d, dt

    async def _kafka_lag(self) -> dict[int, int] | None:
        try:
            lag = await asyncio.wait_for(self.kafka.lag(), self.period_s * 0.8)
        except Exception as exc:  # the broker is away: the workers' gauges stand in
            self.lag_error = f"cannot read the lag from Kafka: {exc or type(exc).__name__}"
            return None
        self.lag_source, self.lag_error = "kafka", None
        return lag
