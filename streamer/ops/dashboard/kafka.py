"""What the dashboard reads from Kafka: the workers' lag, and the predictions topic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from streamer.errors import ConfigError
from streamer.kafka import group_lag, group_offsets
from streamer.ops.dashboard.entities import EntityStore
from streamer.schemas import Prediction
from streamer.settings import Settings

__all__ = ["KafkaView", "PredictionReader"]

log = logging.getLogger(__name__)


class KafkaView:
    """Read-only Kafka clients: an admin client and a group-less consumer for offsets.

    Nothing here may create a topic: a metadata request that names a missing topic makes a broker
    with ``auto.create.topics.enable`` create it (with its defaults), so topics are looked up in
    the whole cluster's metadata first.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        opts = {
            "bootstrap_servers": settings.kafka.bootstrap_servers,
            **settings.kafka.client_options(),
        }
        self.admin = AIOKafkaAdminClient(**opts)
        # read_committed: the end offsets the workers see (transaction markers excluded)
        self._offsets = AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, isolation_level="read_committed", **opts
        )
        self._partitions: dict[str, list[TopicPartition]] = {}
        self._partitions_at = -math.inf

    async def start(self) -> None:
        try:
            await self.admin.start()
            await self._offsets.start()
        except KafkaConnectionError as exc:
            await self.aclose()
            raise ConfigError(
                f"cannot reach Kafka at {self.settings.kafka.bootstrap_servers}: {exc}"
            ) from None

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._offsets.stop()
        with contextlib.suppress(Exception):
            await self.admin.close()

    async def partitions(self, topic: str, max_age_s: float = 10.0) -> list[TopicPartition]:
        """The topic's partitions, [] while it does not exist, from the cluster's metadata as
        of at most ``max_age_s`` ago."""
        if time.monotonic() - self._partitions_at > max_age_s:
            self._partitions = {
                t["topic"]: sorted(
                    TopicPartition(t["topic"], p["partition"]) for p in t["partitions"]
                )
                for t in await self.admin.describe_topics()
                if not t["error_code"]
            }
            self._partitions_at = time.monotonic()
        return self._partitions.get(topic, [])

    async def lag(self) -> dict[int, int]:
        """Per partition of the events topic: its end offset less the offset the workers' group
        committed (or, before the group's first commit, less where the group will start)."""
        parts = await self.partitions(self.settings.topics.events)
        if not parts:
            return {}
        offsets = await group_offsets(self.admin, self._offsets, self.settings.app_id, parts)
        return group_lag(*offsets, self.settings.kafka.auto_offset_reset)


class PredictionReader:
    """Reads the predictions topic from its beginning into an :class:`EntityStore`."""

    def __init__(self, settings: Settings, kafka: KafkaView, store: EntityStore):
        self.settings = settings
        self.kafka = kafka
        self.store = store
        self.status = "starting"

    async def run(self) -> None:
        topic = self.settings.topics.predictions
        # Subscribing to a missing topic would create it: wait until a worker has.
        while not await self._exists(topic):
            self.status = f"waiting for topic {topic}"
            await asyncio.sleep(2)
        while True:
            consumer = AIOKafkaConsumer(
                topic,
                bootstrap_servers=self.settings.kafka.bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                metadata_max_age_ms=10_000,  # partitions added to the topic show up soon
                **self.settings.kafka.client_options(),
            )
            try:
                await consumer.start()
                break
            except KafkaConnectionError as exc:  # the broker went away since the start
                await consumer.stop()
                self.status = f"cannot reach Kafka: {exc}"
                await asyncio.sleep(2)
        self.status = "reading"
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                for records in batches.values():
                    for r in records:
                        if r.value is None:
                            continue
                        try:
                            p = Prediction.from_json(r.value)
                        except (ValueError, KeyError, TypeError):
                            self.store.undecodable += 1
                            continue
                        if not p.window:  # window models' predictions are not a series
                            self.store.add(p)
        finally:
            await consumer.stop()

    async def _exists(self, topic: str) -> bool:
        try:
            return bool(await self.kafka.partitions(topic, max_age_s=2.0))
        except Exception as exc:  # a broker outage: keep waiting
            log.debug("cannot read the topics: %s", exc)
            return False
