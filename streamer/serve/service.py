"""What every engine's worker does besides moving batches: load the model to serve, follow the
registry (hot swap), announce itself in Redis, serve metrics.

:class:`ServingService` is a ``mode`` service (the framework Faust is built on). The default engine
(``workers.app.StreamerService``) runs streamer's own batch loop inside one; the Faust engine
(:class:`streamer.faust.Streamer`) is one bound to a ``faust.App``. Both keep these tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterable

import torch
from mode import Service

from streamer.errors import ConfigError, StoreUnavailable, StreamerError
from streamer.kafka.clients import RunnerStats
from streamer.model.artifact import Artifact, load_artifact
from streamer.model.registry import Registry
from streamer.ops.metrics import Metrics, serve_metrics
from streamer.ops.presence import WorkerInfo, announce, withdraw
from streamer.serve.allocator import retain_freed_memory
from streamer.serve.pipeline import BatchHandler
from streamer.serve.predictor import Predictor, resolve_device
from streamer.settings import Settings
from streamer.state import RedisStateStore, redis_client
from streamer.state.cache import StateCache

__all__ = ["ServingService", "load_handler", "redacted"]

log = logging.getLogger("streamer.worker")


async def _registry_model(settings: Settings, device: torch.device) -> Artifact | None:
    """The registry's active version of the model, if one is active."""
    registry = Registry(redis_client(settings), settings.model_name)
    try:
        version = await registry.active()
        return await registry.load(version, device) if version else None
    finally:
        await registry.aclose()


async def load_handler(settings: Settings) -> BatchHandler:
    """The batch handler around the model to serve: the registry's active version of
    ``model_name`` if there is one, else the artifact at ``model_path``."""
    torch.set_num_threads(settings.torch_threads)
    retain_freed_memory(settings.retain_memory_mb)
    device = resolve_device(settings.device)
    art, unreachable = None, ""
    if settings.registry_poll_s:
        try:
            art = await _registry_model(settings, device)
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


class ServingService(Service):
    """A worker's model, registry watcher, presence and metrics. Subclasses say which partitions
    they own (:meth:`partitions`) and count their batches in :attr:`stats` and :attr:`metrics`."""

    #: set by the subclass before the service starts (the Faust engine loads it in ``on_first_start``)
    handler: BatchHandler

    def __init__(self, settings: Settings, **kwargs: object):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.settings = settings
        self.metrics = Metrics()
        self.stats = RunnerStats()
        self.registry = Registry(redis_client(settings), settings.model_name)
        host = socket.gethostname()
        self.info = WorkerInfo(
            worker_id=f"{host}-{os.getpid()}",
            host=host,
            pid=os.getpid(),
            metrics_url=None,
            model_name=settings.model_name,
            model_version="",
            started_ms=int(time.time() * 1000),
            period_s=settings.metrics.announce_s,
        )

    def serving_handler(self, handler: BatchHandler, engine: str) -> None:
        """Serve through ``handler``: labels the metrics, counts its store retries."""
        self.handler = handler
        s = self.settings
        self.metrics.worker.labels(
            s.app_id, s.model_name, str(handler.predictor.device), s.processing_guarantee
        ).set(1)
        self.metrics.serving(handler.serving)
        handler.on_retry = self.metrics.redis_retries.inc  # counted as they happen
        self.info.model_version = handler.serving
        self.engine = engine

    def partitions(self) -> Iterable[int]:
        """The events topic's partitions this worker owns now."""
        raise NotImplementedError

    def describe(self) -> str:
        """What this worker serves, from where to where, and what it promises: its first line
        in the log."""
        s, handler = self.settings, self.handler
        return (
            f"serving model {s.model_name} version {handler.serving} on "
            f"{handler.predictor.device}: {s.topics.events} -> {s.topics.predictions} "
            f"(dead letters {s.topics.dead_letter}), group {s.app_id}, "
            f"{s.processing_guarantee.replace('_', '-')}, engine {self.engine}, "
            f"Kafka {s.kafka.bootstrap_servers} ({self.kafka_client()}), "
            f"Redis {redacted(s.redis.url)}"
        )

    def kafka_client(self) -> str:
        return self.settings.kafka.client

    def serve_metrics(self) -> None:
        """Serve ``/metrics`` (from a thread of its own), unless metrics are off or already
        served. Called before the worker starts, so a busy port is one clear error before
        anything else happens."""
        m = self.settings.metrics
        if not m.enabled or self.info.metrics_url:
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
    async def _watch_registry(self) -> None:
        """Load a newly activated model version and hand it to the batch handler, which switches
        at its next batch boundary. A registry that cannot be reached or an artifact that
        cannot be loaded is logged and the current model kept."""
        poll = self.settings.registry_poll_s
        failed: str | None = None  # a version that could not be loaded: not tried again
        while poll and not self.should_stop:
            await self.sleep(poll)
            handler = self.handler
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
    async def _announce(self) -> None:
        """Tell tools (``streamer dashboard``, ``streamer doctor``) this worker is alive, where
        its metrics are, what it serves and owns. A Redis outage only delays it."""
        app_id = self.settings.app_id
        while not self.should_stop:
            info = self.info
            info.model_version = self.handler.serving
            info.partitions = sorted(self.partitions())
            info.dead_letters = dict(self.stats.dead_by_reason)
            try:
                await announce(self.registry.redis, app_id, info)
            except Exception as exc:  # never let the announcement stop the worker
                log.debug("cannot announce the worker in Redis: %s", exc)
            await self.sleep(self.settings.metrics.announce_s)

    async def withdraw(self) -> None:
        """Leave the workers' list, close the registry's and the store's clients."""
        with contextlib.suppress(Exception):
            await withdraw(self.registry.redis, self.settings.app_id, self.info.worker_id)
        await self.registry.aclose()
        await self.handler.predictor.aclose()
        s = self.stats
        log.info(
            "stopped after %d batches, %d events, %d predictions (%d re-emitted), %d dead letters",
            s.batches,
            s.events,
            s.predictions,
            s.reemitted,
            s.dead_letters,
        )


def redacted(url: str) -> str:
    """A Redis URL without a password in it.

    >>> redacted("redis://u:secret@h:6379/0")
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
