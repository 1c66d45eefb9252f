"""The worker: a Faust (mode) service around streamer's batch loop. Thin on purpose.

``mode`` is the service and worker framework Faust is built on: it gives the process its lifecycle
(start, signals, graceful stop on SIGTERM/SIGINT, logging), exactly as for a Faust app. The hot path
itself is :class:`streamer.runner.Runner`, which moves whole batches through plain aiokafka clients
because Faust streams pay their per-message cost on every event.
"""

from __future__ import annotations

import gc
import logging

import torch
from mode import Service

from streamer.artifact import load_artifact
from streamer.cache import StateCache
from streamer.errors import ConfigError
from streamer.pipeline import BatchHandler
from streamer.predictor import Predictor, resolve_device
from streamer.runner import Runner
from streamer.settings import Settings
from streamer.state import RedisStateStore

__all__ = ["StreamerService", "build_handler"]

log = logging.getLogger("streamer.worker")


def build_handler(settings: Settings) -> BatchHandler:
    if settings.model_path is None:
        raise ConfigError(
            "no model: set STREAMER_MODEL_PATH or pass --model (streamer train writes one)"
        )
    torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    art = load_artifact(settings.model_path, device)
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
    )
    log.info("model %s (version %s) on %s", settings.model_path, art.version, device)
    return BatchHandler(predictor, max_event_bytes=settings.topics.max_event_bytes)


class StreamerService(Service):
    """Runs the batch loop; stopping lets the batch in flight finish, deliver and commit."""

    def __init__(self, settings: Settings, handler: BatchHandler):
        super().__init__()
        self.runner = Runner(settings, handler)

    async def on_start(self) -> None:
        # Everything loaded so far (torch, the model) lives as long as the worker: keep it out of
        # the garbage collector's passes, and let the young generation grow larger between them,
        # since each batch allocates tens of thousands of short-lived objects.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        await self.runner.start()

    @Service.task
    async def _batches(self) -> None:
        try:
            await self.runner.run()
        except Exception as exc:
            # Anything that is not an outage (those are retried inside) stops the worker: its
            # batch was not committed, so it is consumed again after a restart.
            log.exception("the batch loop failed; stopping the worker")
            await self.crash(exc)

    async def on_stop(self) -> None:
        await self.runner.stop()
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
