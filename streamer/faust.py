"""streamer inside a Faust app: batched, fenced, Redis-backed stepping as a Faust agent.

The only module of streamer that imports :mod:`faust`. Bind a :class:`Streamer` to a
``faust.App`` and either let it define the agent::

    app = faust.App("shop", broker="kafka://127.0.0.1:9092")
    streamer = Streamer(app, Settings.load())
    predict = streamer.agent()

or write the agent yourself, next to your own topics and tables::

    @app.agent(streamer.events_topic)
    async def predict(stream):
        async for outcome in streamer.batches(stream):
            ...  # outcome.predictions: what was just sent

:meth:`Streamer.batches` takes up to ``batch.max_size`` events at a time without acking them
(``stream.noack_take``), steps and saves their states in one batch (the offset fence and the
compare-and-set of the default engine), sends the predictions and dead letters, waits for the
broker to have them, and only then acks the events: Faust commits an offset only after its
prediction is out. So the Faust engine is at least once with exact repeats: a crash repeats what
was not committed, and the repeats carry the same values and identities.

The :class:`Streamer` is a ``mode`` service started with the app before its agents (model loaded,
topics created, metrics served, presence announced, registry watched for a hot swap) and stopped
after them; the partitions an app loses are forgotten (their cached states), and their events'
kept predictions are re-sent by whichever worker consumes them next.

Exactly once is not offered: Faust's transactions (``processing_guarantee="exactly_once"``) open
one transaction per source partition and attach a send to the event being processed, but a batch's
predictions come from many partitions at once and are sent outside any event's context.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any, cast

import faust
import numpy as np
from faust.types import EventT, StreamT, TopicT

from streamer.errors import ConfigError
from streamer.kafka.clients import (
    FALLBACK_SESSION_S,
    count_batch,
    dead_letter_message,
    ensure_topics,
    heartbeat_ms,
)
from streamer.serve.pipeline import BatchHandler, Outcome
from streamer.serve.service import ServingService, load_handler
from streamer.settings import Settings

__all__ = ["Streamer", "faust_app", "faust_worker", "streamer_app"]

log = logging.getLogger("streamer.worker")

#: Faust's ``stream.noack_take`` waits for a full batch forever without a timeout: with
#: ``batch.max_wait_s`` at 0 (take what has come) a batch is what came within this long.
MIN_WITHIN_S = 0.005

_DATA = Path(tempfile.gettempdir()) / "streamer-faust"


def faust_app(settings: Settings, **conf: Any) -> faust.App:
    """A ``faust.App`` for ``settings``: its id is the consumer group (``app_id``), its broker and
    credentials, session timeout, offset reset and linger are streamer's; raw keys and values, an
    in-memory store, no web server (Faust's ``worker`` command starts one unless given
    ``--without-web``). ``conf`` overrides or adds Faust settings (e.g. ``web_enabled=True``)."""
    k = settings.kafka
    session_s = k.session_timeout_s or FALLBACK_SESSION_S
    options: dict[str, Any] = {
        "broker": ";".join(f"kafka://{s.strip()}" for s in k.bootstrap_servers.split(",")),
        "broker_session_timeout": session_s,
        "broker_heartbeat_interval": heartbeat_ms(session_s) / 1000,
        "consumer_auto_offset_reset": k.auto_offset_reset,
        "producer_linger": k.producer_linger_ms / 1000,
        "producer_acks": -1,
        "topic_partitions": settings.topics.partitions,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "store": "memory://",
        # (Faust makes its data directory even with no tables: not in the working directory)
        "datadir": str(_DATA / f"{settings.app_id}-data"),
        "web_enabled": False,
    }
    credentials = _credentials(settings)
    if credentials is not None:
        options["broker_credentials"] = credentials
    options.update(conf)
    _DATA.mkdir(parents=True, exist_ok=True)  # (Faust makes only the last level)
    return faust.App(settings.app_id, **options)


def streamer_app(settings: Settings, handler: BatchHandler | None = None) -> faust.App:
    """A Faust app for ``settings`` (:func:`faust_app`) with a :class:`Streamer` and its agent
    (:meth:`Streamer.agent`): the Faust engine's whole worker (``workers.faust_app``)."""
    app = faust_app(settings)
    Streamer(app, settings, handler).agent()
    return app


def faust_worker(settings: Settings, handler: BatchHandler, loglevel: str) -> faust.Worker:
    """A Faust worker running :func:`streamer_app` (``streamer worker --engine faust``)."""
    app = faust_app(settings)
    streamer = Streamer(app, settings, handler)
    streamer.agent()
    streamer.serve_metrics()  # a busy port: one line, before the worker starts
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False)
    worker.spinner = None  # (Faust's terminal spinner sets the root logger to DEBUG)
    return worker


def _credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    k = settings.kafka
    opts = k.client_options()
    if k.security_protocol == "SSL":
        return faust.SSLCredentials(opts["ssl_context"])
    if k.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=opts["sasl_plain_username"],
            password=opts["sasl_plain_password"],
            mechanism=opts["sasl_mechanism"],
            ssl_context=opts.get("ssl_context"),
        )
    return None


class Streamer(ServingService):
    """streamer's predictor bound to a Faust app's lifecycle.

    Its topics (:attr:`events_topic`, :attr:`predictions_topic`, :attr:`windows_topic`,
    :attr:`dead_letter_topic`) are the app's, with raw keys and values, named by ``settings``.
    """

    def __init__(
        self,
        app: faust.App,
        settings: Settings | None = None,
        handler: BatchHandler | None = None,
    ):
        """``settings``: :meth:`Settings.load` if not given. ``handler``: the model to serve,
        loaded when the app starts if not given (:func:`~streamer.serve.service.load_handler`)."""
        settings = settings or Settings.load()
        if settings.processing_guarantee == "exactly_once":
            raise ConfigError(
                "the Faust engine is at least once: Faust's transactions go per source partition "
                "and a batch spans many; use the default engine for exactly once"
            )
        super().__init__(settings, loop=app.loop)
        self.app = app
        t = settings.topics
        self.events_topic = self._topic(t.events)
        self.predictions_topic = self._topic(t.predictions)
        self.windows_topic = self._topic(t.windows)
        self.dead_letter_topic = self._topic(t.dead_letter)
        #: per owned partition, the offset after the last event whose outputs were delivered:
        #: the store keeps the outputs from there on for re-emission
        self._delivered: dict[int, int] = {}
        self._ready = asyncio.Event()
        self._handler = handler
        self._busy = False  # a batch is being processed
        self._last_batch = 0.0  # (time.monotonic)
        app.add_dependency(self)  # started before the app's agents, stopped after them
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]

    def _topic(self, name: str) -> TopicT:
        return self.app.topic(name, key_serializer="raw", value_serializer="raw")

    def kafka_client(self) -> str:
        return "Faust, aiokafka"

    async def on_first_start(self) -> None:
        await ensure_topics(self.settings)
        handler = self._handler or await load_handler(self.settings)
        self.serving_handler(handler, "faust")
        self.serve_metrics()

    async def on_start(self) -> None:
        log.info("%s", self.describe())
        if self.info.metrics_url:
            log.info("metrics at %s", self.info.metrics_url)
        self._ready.set()

    async def on_stop(self) -> None:
        if self._ready.is_set():
            await self.withdraw()

    def partitions(self) -> list[int]:
        topic = self.settings.topics.events
        try:
            owned = self.app.consumer.assignment()
        except Exception:  # the app's consumer is not made yet
            return []
        return [tp.partition for tp in owned if tp.topic == topic]

    def agent(self, name: str = "streamer", **kwargs: Any) -> Any:
        """Define the app's agent that predicts for every event of :attr:`events_topic` (the
        ready-made agent of ``workers.faust_app``). ``kwargs`` go to ``app.agent``."""

        async def predict(stream: StreamT[Any]) -> None:
            async for _ in self.batches(cast("faust.Stream[Any]", stream)):
                pass

        predict.__name__ = predict.__qualname__ = name
        return self.app.agent(self.events_topic, name=name, **kwargs)(predict)

    async def batches(self, stream: faust.Stream[Any]) -> AsyncIterator[Outcome]:
        """Take the stream's events in batches, predict for them (:meth:`process`), yield each
        batch's :class:`Outcome` once its predictions are out, and ack its events when the
        caller asks for the next batch: what the caller does with a batch (sends of its own
        included) is done before Faust may commit its offsets.

        A batch that fails (anything but an outage, which is waited out) crashes the app without
        acking its events: they are consumed again after a restart, and never skipped by events
        after them.
        """
        b = self.settings.batch
        within = max(b.max_wait_s, MIN_WITHIN_S)
        await self._ready.wait()
        async for events in stream.noack_take(b.max_size, within=within):
            try:
                outcome = await self.process(events)
            except Exception as exc:
                log.exception("a batch failed; stopping: its events are consumed again")
                await self.app.crash(exc)
                raise
            yield outcome  # the caller's own work on the batch is done before its acks
            for event in events:
                await stream.ack(event)

    async def process(self, events: Sequence[EventT[Any]]) -> Outcome:
        """Predict for a batch of the stream's events: validate, step, save (fenced), then send
        dead letters and predictions and wait until the broker has them. Ack the events after
        this returns, not before."""
        started = time.perf_counter()
        messages = [e.message for e in events]
        self._busy = True
        try:
            outcome = await self.handler.handle(messages, self._delivered)
            await asyncio.gather(*await self._send(outcome))
        finally:
            self._busy, self._last_batch = False, time.monotonic()
        delivered = self._delivered
        for m in messages:
            if m.offset >= delivered.get(m.partition, 0):
                delivered[m.partition] = m.offset + 1
        produced = np.array(
            [m.timestamp * 1000.0 if m.timestamp else -1.0 for m in messages], np.float64
        )
        count_batch(self.stats, self.metrics, self.handler, produced, outcome, started)
        self._observe_lag()
        return outcome

    async def _send(self, outcome: Outcome) -> list[Awaitable[Any]]:
        """Hand the batch's dead letters and outputs to the app's producer, in batch order;
        returns their deliveries."""
        send, topics = self.app.producer.send, self.settings.topics
        futures = []
        for d in outcome.dead_letters:
            value, headers = dead_letter_message(d, topics)
            futures.append(await send(topics.dead_letter, d.key, value, None, None, headers))
        keys, values, window_keys, window_values = outcome.encoded()
        for topic, ks, vs in (
            (topics.windows, window_keys, window_values),
            (topics.predictions, keys, values),
        ):
            for k, v in zip(ks, vs, strict=True):
                futures.append(await send(topic, k, v, None, None, None))
        return futures

    @ServingService.task
    async def _trim_at_rest(self) -> None:
        """A second after the last batch: let the store drop the kept predictions of what was
        delivered, so that Redis holds only the states. Best effort (the next batch trims too)."""
        while not self.should_stop:
            await self.sleep(1.0)
            if not self._busy and time.monotonic() - self._last_batch >= 1.0:
                await self.handler.predictor.trim_at_rest(self._delivered)

    def _observe_lag(self) -> None:
        """Per owned partition: the broker's end offset minus the next offset to deliver."""
        consumer, topic = self.app.consumer, self.settings.topics.events
        lag = {}
        owned = [tp for tp in consumer.assignment() if tp.topic == topic]
        for tp in owned:
            end, base = consumer.highwater(tp), self._delivered.get(tp.partition)
            if end and base is not None:
                lag[tp.partition] = max(0, end - base)
        self.metrics.partitions(lag, owned=len(owned))

    async def _on_assigned(self, app: faust.App, assigned: set[Any], **_: Any) -> None:
        topic = self.settings.topics.events
        got = sorted(tp.partition for tp in assigned if tp.topic == topic)
        if got:
            log.info("partitions assigned: %s", got)

    async def _on_revoked(self, app: faust.App, revoked: set[Any], **_: Any) -> None:
        """Faust has waited for the events in flight to be acked: forget the states cached for
        the partitions that go, and where their outputs were delivered."""
        topic = self.settings.topics.events
        gone = {tp.partition for tp in revoked if tp.topic == topic}
        for p in gone:
            self._delivered.pop(p, None)
        if gone and self._ready.is_set():
            self.handler.predictor.forget_partitions(gone)
            log.info("partitions revoked: %s", sorted(gone))
