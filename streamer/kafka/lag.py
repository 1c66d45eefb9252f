"""The lag of the partitions a worker owns, as the ``streamer_partition_lag`` gauges show it.

The end offset is the high watermark of the consumer's last fetch or the broker's answer to
:meth:`Lag.refresh`, whichever is newer; the lag is that less the committed offset (or the
partition's first offset, before any commit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from streamer.ops.metrics import Metrics

__all__ = ["Lag", "assignment"]

log = logging.getLogger("streamer.kafka.lag")


def assignment(consumer: AIOKafkaConsumer | None) -> set[TopicPartition]:
    """The partitions ``consumer`` owns now (none before it joined the group)."""
    if consumer is None:
        return set()
    try:
        return set(consumer.assignment())
    except IllegalStateError:
        return set()


class Lag:
    """Per owned partition: the end and first offsets the broker last told, and the gauges."""

    def __init__(
        self,
        consumer: Callable[[], AIOKafkaConsumer | None],
        committed: dict[int, int],
        metrics: Metrics,
    ):
        self._consumer = consumer
        self._committed = committed  # partition -> committed offset, kept by the runner
        self._metrics = metrics
        self._ends: dict[int, int] = {}
        self._firsts: dict[int, int] = {}

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: their offsets are another worker's now."""
        for p in partitions:
            self._ends.pop(p, None)
            self._firsts.pop(p, None)

    def observe(self) -> None:
        """Publish the owned partitions' lag."""
        consumer = self._consumer()
        if consumer is None:
            return
        owned = assignment(consumer)
        lag: dict[int, int] = {}
        for tp in owned:
            p = tp.partition
            end = max(consumer.highwater(tp) or 0, self._ends.get(p, 0))
            base = self._committed.get(p, self._firsts.get(p))
            if end and base is not None:
                lag[p] = max(0, end - base)
        self._metrics.partitions(lag, owned=len(owned))

    async def refresh(self) -> None:
        """Ask the broker for the owned partitions' end offsets, then :meth:`observe`. On a timer:
        the high watermarks a consumer learns from its fetches stop moving while the records it
        fetched wait, as they do while a batch waits out a Redis outage."""
        consumer = self._consumer()
        if consumer is None:
            return
        owned = list(assignment(consumer))
        try:
            ends = await consumer.end_offsets(owned) if owned else {}
            new = [tp for tp in owned if tp.partition not in self._committed]
            firsts = await consumer.beginning_offsets(new) if new else {}
        except (KafkaError, IllegalStateError) as exc:
            log.debug("cannot read the end offsets: %s", exc)
            return
        self._ends.update({tp.partition: o for tp, o in ends.items()})
        self._firsts.update({tp.partition: o for tp, o in firsts.items()})
        self.observe()
