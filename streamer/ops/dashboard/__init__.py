"""``streamer dashboard``: a live web page of what the workers do, and of one entity's forecasts.

One process, one aiohttp server, no Faust. Beside the server, two jobs:

- :class:`~streamer.ops.dashboard.collector.Collector`, every second: scrape every live worker's
  ``/metrics`` (the workers announce their URL in Redis, :mod:`streamer.ops.presence`, unless
  ``--metrics`` names them) and turn counter deltas into rates, per worker and then summed.
  Latency quantiles come from the interval's bucket deltas of ``streamer_latency_seconds``,
  interpolated as PromQL's ``histogram_quantile`` does (:mod:`streamer.ops.dashboard.rates`). Lag is
  read from Kafka itself (the group's committed offsets against the topic's end offsets), so it
  stays right while no worker runs; the workers' lag gauges stand in when Kafka does not answer.
  The last ten minutes are kept.
- :class:`~streamer.ops.dashboard.kafka.PredictionReader`: the predictions topic from its beginning
  into an :class:`~streamer.ops.dashboard.entities.EntityStore`: the last points of each entity (its
  ``y``, the one-step forecast made at the event before, the latest full forecast), for a bounded
  number of entities.

The server (:mod:`streamer.ops.dashboard.server`) streams both to each page as server-sent events:
the metrics every second, the picked entity's new points as they arrive. The page is static
(``streamer/ops/web``), its charts drawn by uPlot, vendored: it works offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from aiohttp import web
from redis.exceptions import RedisError

from streamer.errors import ConfigError, StoreUnavailable
from streamer.ops.dashboard.collector import Collector
from streamer.ops.dashboard.entities import EntityStore
from streamer.ops.dashboard.kafka import KafkaView, PredictionReader
from streamer.ops.dashboard.server import DashboardServer
from streamer.settings import Settings
from streamer.state import redis_client

__all__ = ["run_dashboard", "serve_dashboard"]


async def serve_dashboard(
    settings: Settings, host: str, port: int, metrics_urls: list[str] | None = None
) -> None:
    """Serve the dashboard at ``http://host:port/`` until SIGINT or SIGTERM (``port`` 0: a free
    one; the URL is printed). The workers are those announced in Redis, or ``metrics_urls``.

    A port in use, or Kafka or Redis out of reach at the start, raise a
    :class:`~streamer.errors.StreamerError` that says so in one line; later outages show on the
    page and pass.
    """
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, not {port}")
    async with contextlib.AsyncExitStack() as stack:
        redis = None
        if not metrics_urls:
            redis = redis_client(settings)
            stack.push_async_callback(redis.aclose)
            try:
                await redis.ping()
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(
                    f"cannot reach Redis at {settings.redis.url} to find the workers: {exc} "
                    "(or name them with --metrics URL)"
                ) from None
        kafka = KafkaView(settings)
        await kafka.start()
        stack.push_async_callback(kafka.aclose)
        store = EntityStore()
        collector = Collector(settings, kafka, redis, metrics_urls or ())
        reader = PredictionReader(settings, kafka, store)
        runner = web.AppRunner(
            DashboardServer(settings, collector, store, reader).app(),
            access_log=None,
            shutdown_timeout=2,
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError(
                f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}"
            ) from None
        url = f"http://{host}:{runner.addresses[0][1]}/"
        print(f"dashboard at {url} (app {settings.app_id}; Ctrl-C stops it)", flush=True)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            stack.callback(loop.remove_signal_handler, sig)
        jobs = [asyncio.create_task(collector.run()), asyncio.create_task(reader.run())]
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([*jobs, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*jobs, stopped):
                task.cancel()
            await asyncio.gather(*jobs, stopped, return_exceptions=True)
        for task in jobs:  # a job that ended by itself failed: say why
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                raise failure


def run_dashboard(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8050,
    metrics_urls: list[str] | None = None,
) -> int:
    asyncio.run(serve_dashboard(settings, host, port, metrics_urls))
    return 0
