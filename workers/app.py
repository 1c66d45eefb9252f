"""The worker: a Faust (mode) service around streamer's batch loop. Thin on purpose.

``mode`` is the service and worker framework Faust is built on: it gives the process its lifecycle
(start, signals, graceful stop on SIGTERM/SIGINT, logging), exactly as for a Faust app. The hot path
itself is :class:`streamer.kafka.runner.Runner`, which moves whole batches through plain aiokafka clients
because Faust streams pay their per-message cost on every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time

import torch
from mode import Service

from streamer.errors import ConfigError, StoreUnavailable, StreamerError
from streamer.kafka.runner import Runner
from streamer.model.artifact import Artifact, load_artifact
from streamer.model.registry import Registry
from streamer.ops.metrics import Metrics, serve_metrics
from streamer.ops.presence import WorkerInfo, announce, withdraw
from streamer.serve.pipeline import BatchHandler
from streamer.serve.predictor import Predictor, resolve_device
from streamer.settings import Settings
from streamer.state import RedisStateStore, redis_client
from streamer.state.cache import StateCache

__all__ = ["StreamerService", "build_handler"]

log = logging.getLogger("streamer.worker")


async def _registry_model(settings: Settings, device: torch.device) -> Artifact | None:
    """The registry's active version of the model, if one is active."""
    registry = Registry(redis_client(settings), settings.model_name)
    try:
        version = await registry.active()
        return await registry.load(version, device) if version else None
    finally:
        await registry.aclose()


def build_handler(settings: Settings) -> BatchHandler:
    """The batch handler around the model to serve: the registry's active version of
    ``model_name`` if there is one, else the artifact at ``model_path``."""
    torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    art, unreachable = None, ""
    if settings.registry_poll_s:
        try:
            art = asyncio.run(_registry_model(settings, device))
        except StoreUnavailable as exc:  # the watcher looks again once the worker runs
            unreachable = f" ({exc})"
            if settings.model_path is not None:
                log.warning("%s; starting with %s", exc, settings.model_path)
    if art is not None:
        source = f"the registry ({settings.model_name} active)"
    elif settings.model_path is not None:
        art, source = load_artifact(settings.model_path, device), str(settings.model_path)
    else:
        raise ConfigError(
            "no model: set STREAMER_MODEL_PATH or pass --model (streamer train writes one), "
            f"or activate a version of {settings.model_name!r} (streamer model activate)"
            + unreachable
        )
    predictor = Predictor(
        art.model,
        art.version,
        RedisStateStore.from_settings(settings),
        device=device,
        state_dtype=settings.state_dtype,
        max_kept_outputs=settings.max_kept_outputs,
        cache=StateCache(int(settings.cache_max_mb * 2**20), settings.state_ttl_s)
        if settings.cache_max_mb
        else None,
        fused_cell_from=settings.fused_cell_from,
        on_model_change=settings.on_model_change,
        on_partition_change=settings.on_partition_change,
    )
    log.info("model %s from %s on %s", art.version, source, device)
    return BatchHandler(
        predictor,
        max_event_bytes=settings.topics.max_event_bytes,
        max_behind=settings.batch.max_behind,
    )


class StreamerService(Service):
    """Runs the batch loop; stopping lets the batch in flight finish, deliver and commit."""

    def __init__(self, settings: Settings, handler: BatchHandler):
        super().__init__()
        self.settings = settings
        self.metrics = Metrics()
        self.metrics.worker.labels(
            settings.app_id,
            settings.model_name,
            str(handler.predictor.device),
            settings.processing_guarantee,
        ).set(1)
        self.runner: Runner
        if settings.kafka.client == "confluent":
            from streamer.kafka.confluent import ConfluentRunner

            self.runner = ConfluentRunner(settings, handler, self.metrics)
        else:
            self.runner = Runner(settings, handler, self.metrics)
        self.registry = Registry(redis_client(settings), settings.model_name)
        host = socket.gethostname()
        self.info = WorkerInfo(
            worker_id=f"{host}-{os.getpid()}",
            host=host,
            pid=os.getpid(),
            metrics_url=None,
            model_name=settings.model_name,
            model_version=handler.serving,
            started_ms=int(time.time() * 1000),
            period_s=settings.metrics.announce_s,
        )

    async def on_start(self) -> None:
        # Everything loaded so far (torch, the model) lives as long as the worker: keep it out of
        # the garbage collector's passes, and let the young generation grow larger between them,
        # since each batch allocates tens of thousands of short-lived objects.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        log.info("%s", self.describe())
        if self.info.metrics_url:
            log.info("metrics at %s", self.info.metrics_url)
        await self.runner.start()

    def describe(self) -> str:
        """What this worker serves, from where to where, and what it promises: its first line
        in the log."""
        s, handler = self.settings, self.runner.handler
        return (
            f"serving model {s.model_name} version {handler.serving} on "
            f"{handler.predictor.device}: {s.topics.events} -> {s.topics.predictions} "
            f"(dead letters {s.topics.dead_letter}), group {s.app_id}, "
            f"{s.processing_guarantee.replace('_', '-')}, Kafka {s.kafka.bootstrap_servers} "
            f"({s.kafka.client}), Redis {_redacted(s.redis.url)}"
        )

    def serve_metrics(self) -> None:
        """Serve ``/metrics`` (from a thread of its own), unless metrics are off. Called before
        the worker starts, so a busy port is one clear error before anything else happens."""
        m = self.settings.metrics
        if not m.enabled:
            return
        try:
            port = serve_metrics(self.metrics, m.host, m.port)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {m.host}:{m.port} ({exc.strerror}); set "
                "STREAMER_METRICS__PORT to a free port, or 0 for any"
            ) from None
        self.info.metrics_url = f"http://{_advertised(m.advertise_host, m.host)}:{port}/metrics"

    @Service.task
    async def _batches(self) -> None:
        try:
            await self.runner.run()
        except Exception as exc:
            # Anything that is not an outage (those are retried inside) stops the worker: its
            # batch was not committed, so it is consumed again after a restart.
            log.exception("the batch loop failed; stopping the worker")
            await self.crash(exc)

    @Service.task
    async def _watch_registry(self) -> None:
        """Load a newly activated model version and hand it to the batch loop, which switches
        at its next batch boundary. A registry that cannot be reached or an artifact that
        cannot be loaded is logged and the current model kept."""
        poll = self.settings.registry_poll_s
        handler = self.runner.handler
        failed: str | None = None  # a version that could not be loaded: not tried again
        while poll and not self.should_stop:
            await self.sleep(poll)
            try:
                version = await self.registry.active()
                if version is None or version in (handler.serving, failed):
                    continue
                art = await self.registry.load(version, handler.predictor.device)
            except StoreUnavailable as exc:
                if self.should_stop:  # the client was closed by on_stop
                    break
                log.warning("%s; serving %s", exc, handler.serving)
                continue
            except StreamerError as exc:
                log.error(
                    "model %s cannot be served (%s); serving %s", version, exc, handler.serving
                )
                failed = version
                continue
            log.info("model %s activated; switching from %s", version, handler.serving)
            handler.stage(art.model, art.version)

    @Service.task
    async def _observe(self) -> None:
        """Refresh the lag gauges from the broker's end offsets, also while no batch completes
        (idle, or waiting out an outage)."""
        while not self.should_stop:
            await self.sleep(2.0)
            await self.runner.refresh_lag()

    @Service.task
    async def _announce(self) -> None:
        """Tell tools (``streamer dashboard``, ``streamer doctor``) this worker is alive, where
        its metrics are, what it serves and owns. A Redis outage only delays it."""
        app_id = self.settings.app_id
        while not self.should_stop:
            info = self.info
            info.model_version = self.runner.handler.serving
            info.partitions = sorted(tp.partition for tp in self.runner.assigned())
            info.dead_letters = dict(self.runner.stats.dead_by_reason)
            try:
                await announce(self.registry.redis, app_id, info)
            except Exception as exc:  # never let the announcement stop the worker
                log.debug("cannot announce the worker in Redis: %s", exc)
            await self.sleep(self.settings.metrics.announce_s)

    async def on_stop(self) -> None:
        with contextlib.suppress(Exception):
            await withdraw(self.registry.redis, self.settings.app_id, self.info.worker_id)
        await self.runner.stop()
        await self.registry.aclose()
        await self.runner.handler.predictor.aclose()
        s = self.runner.stats
        log.info(
            "stopped after %d batches, %d events, %d predictions (%d re-emitted), %d dead letters",
            s.batches,
            s.events,
            s.predictions,
            s.reemitted,
            s.dead_letters,
        )


def _redacted(url: str) -> str:
    """A Redis URL without a password in it.

    >>> _redacted("redis://u:secret@h:6379/0")
    'redis://u:***@h:6379/0'
    """
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def _advertised(advertise_host: str | None, bound: str) -> str:
    """The host others reach this worker's endpoints at."""
    if advertise_host:
        return advertise_host
    if bound not in ("0.0.0.0", "::", ""):
        return bound
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
