"""The Faust app: topics, and one agent that hands batches to the predictor and sends the results.

Events are taken with ``stream.noack_take`` (``take`` with manual acks): an event is acknowledged,
and so its offset becomes committable, only after its state is saved in Redis and its prediction or
dead letter is handed to the producer. Faust flushes the producer before it commits offsets.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import torch
from mode import CrashingSupervisor

from streamer.artifact import load_artifact
from streamer.errors import ConfigError
from streamer.pipeline import BatchHandler, RawMessage
from streamer.predictor import Predictor, resolve_device
from streamer.settings import Settings
from streamer.state import RedisStateStore

__all__ = ["create_app"]

log = logging.getLogger("streamer.worker")


def build_handler(settings: Settings) -> BatchHandler:
    if settings.model_path is None:
        raise ConfigError(
            "no model: set STREAMER_MODEL_PATH or pass --model (streamer train writes one)"
        )
    torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    art = load_artifact(settings.model_path, device)
    store = RedisStateStore.from_url(
        settings.redis.url,
        settings.model_name,
        settings.state_ttl_s,
        settings.redis.socket_timeout_s,
    )
    predictor = Predictor(
        art.model, art.version, store, device=device, state_dtype=settings.state_dtype
    )
    log.info("model %s (version %s) on %s", settings.model_path, art.version, device)
    return BatchHandler(predictor, max_event_bytes=settings.topics.max_event_bytes)


def create_app(settings: Settings) -> faust.App:
    handler = build_handler(settings)  # fail at start, not at the first event
    settings.worker_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=settings.kafka.broker_url,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topics.partitions,
        broker_session_timeout=settings.kafka.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.kafka.session_timeout_s / 3),
        consumer_auto_offset_reset=settings.kafka.auto_offset_reset,
        producer_linger=settings.kafka.producer_linger_ms / 1000,
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        datadir=str(settings.worker_dir / "{conf.name}-data"),
    )
    topics = settings.topics
    events = app.topic(topics.events, partitions=topics.partitions)
    predictions = app.topic(topics.predictions, partitions=topics.partitions)
    dead_letters = app.topic(topics.dead_letter, partitions=topics.partitions)

    async def run_batch(batch: list[Any]) -> None:
        msgs = [
            RawMessage(ev.message.key, ev.message.value, ev.message.partition, ev.message.offset)
            for ev in batch
        ]
        out = await handler.handle(msgs)
        for d in out.dead_letters:
            await dead_letters.send(key=d.key, value=d.value, headers=d.headers(topics.events))
        for p in out.predictions:
            await predictions.send(key=p.unique_id.encode(), value=p.to_json())

    # Any failure that is not an outage (those are retried inside the handler) stops the worker:
    # restarting the agent in place would go on with later events and leave this batch behind.
    @app.agent(events, supervisor_strategy=CrashingSupervisor)
    async def predict(stream: Any) -> None:  # a faust.Stream; noack_take is not on StreamT
        async for batch in stream.noack_take(
            settings.batch.max_size, within=settings.batch.max_wait_s
        ):
            # A batch once started is finished even when the worker is stopping: its states may be
            # saved already, so its predictions must go out before its offsets are acknowledged.
            # A batch that fails is never acknowledged: it is consumed again after a restart.
            task = asyncio.ensure_future(run_batch(batch))
            cancelled = False
            while True:
                try:
                    await asyncio.shield(task)
                    break
                except asyncio.CancelledError:
                    if task.done():
                        raise
                    cancelled = True  # finish the batch first, however often we are asked
            for ev in batch:
                await stream.ack(ev)
            if cancelled:
                raise asyncio.CancelledError

    return app
