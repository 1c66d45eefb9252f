"""Kafka: the clients' helpers (:mod:`~streamer.kafka.clients`: topics, replay, record batches,
group offsets), Kafka's default partitioner in numpy (:mod:`~streamer.kafka.partitioning`), the
worker's batch loop (:mod:`~streamer.kafka.runner`: take, deliver, commit) and the lag of the
partitions it owns (:mod:`~streamer.kafka.lag`)."""

from __future__ import annotations

from streamer.kafka.clients import *  # noqa: F403 (the clients' helpers are the package's)
from streamer.kafka.clients import __all__ as __all__
