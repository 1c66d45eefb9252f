"""The worker: a Faust (mode) service around streamer's batch loop. Thin on purpose.

``mode`` is the service and worker framework Faust is built on: it gives the process its lifecycle
(start, signals, graceful stop on SIGTERM/SIGINT, logging), exactly as for a Faust app. The hot path
itself is :class:`streamer.kafka.runner.Runner`, which moves whole batches through plain aiokafka clients
because Faust streams pay their per-message cost on every event.
"""

from __future__ import annotations

import asyncio
import gc
import logging

from mode import Service

from streamer.kafka.runner import Runner
from streamer.serve.pipeline import BatchHandler
from streamer.serve.service import ServingService, load_handler
from streamer.settings import Settings

__all__ = ["StreamerService", "build_handler"]

log = logging.getLogger("streamer.worker")


def build_handler(settings: Settings) -> BatchHandler:
    """The batch handler around the model to serve (:func:`streamer.serve.service.load_handler`),
    loaded before the worker's loop starts."""
    return asyncio.run(load_handler(settings))


class StreamerService(ServingService):
    """Runs the batch loop; stopping lets the batch in flight finish, deliver and commit."""

    def __init__(self, settings: Settings, handler: BatchHandler):
        super().__init__(settings)
        self.runner: Runner
        if settings.kafka.client == "confluent":
            from streamer.kafka.confluent import ConfluentRunner

            self.runner = ConfluentRunner(settings, handler, self.metrics)
        else:
            self.runner = Runner(settings, handler, self.metrics)
        self.stats = self.runner.stats
        self.serving_handler(handler, "streamer")

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
    async def _observe(self) -> None:
        """Refresh the lag gauges from the broker's end offsets, also while no batch completes
        (idle, or waiting out an outage)."""
        while not self.should_stop:
            await self.sleep(2.0)
            await self.runner.refresh_lag()

    def partitions(self) -> list[int]:
        return [tp.partition for tp in self.runner.assigned()]

    async def on_stop(self) -> None:
        await self.runner.stop()
        await self.withdraw()
