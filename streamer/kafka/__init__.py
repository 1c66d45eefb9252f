"""Kafka: the clients' helpers (:mod:`~streamer.kafka.clients`: topics, replay, record batches,
group offsets), Kafka's default partitioner in numpy (:mod:`~streamer.kafka.partitioning`) and
the worker's batch loop (:mod:`~streamer.kafka.runner`: take, deliver, commit)."""

from __future__ import annotations

from streamer.kafka.clients import (
    ensure_topics,
    group_lag,
    group_offsets,
    read_topic,
    replay_events,
    send_keyed,
)

__all__ = [
    "ensure_topics",
    "group_lag",
    "group_offsets",
    "read_topic",
    "replay_events",
    "send_keyed",
]
