"""confluent-kafka's side of :class:`~streamer.kafka.confluent.ConfluentRunner`: the clients'
configurations, the errors and what they mean, consumed records, the lag from librdkafka's
watermarks, and a batch's outputs handed to the producer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from streamer.kafka.clients import dead_letter_message
from streamer.kafka.lag import Lag
from streamer.kafka.partitioning import partitions_of
from streamer.serve.pipeline import Outcome
from streamer.settings import Settings, TopicSettings

__all__ = [
    "FENCED",
    "REFUSED",
    "TRANSIENT",
    "BatchProducer",
    "ConfluentLag",
    "Record",
    "consumer_config",
    "kafka_error",
    "producer_config",
]

#: Errors of a commit (or of offsets sent to a transaction) that mean the partitions moved on.
REFUSED = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._STATE,
}
#: Errors that pass: the broker or its coordinator moved, restarted or is loading.
TRANSIENT = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.CONCURRENT_TRANSACTIONS,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._WAIT_COORD,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._MSG_TIMED_OUT,
}
#: Errors that no waiting fixes for a producer: another one took its transactional id.
FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


class Record:
    """One consumed event, with the attributes the pipeline reads (as aiokafka's records)."""

    __slots__ = ("key", "offset", "partition", "timestamp", "value")
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp: int

    def __init__(self, m: Message):
        self.key = m.key()
        self.value = m.value()
        self.partition = m.partition()  # type: ignore[assignment]
        self.offset = m.offset()  # type: ignore[assignment]
        self.timestamp = m.timestamp()[1]


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The :class:`KafkaError` a confluent-kafka exception carries, if any."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


class ConfluentLag(Lag):
    """:class:`~streamer.kafka.lag.Lag` read from librdkafka's watermarks."""

    def __init__(self, runner: Any):
        super().__init__(lambda: None, runner._committed, runner.metrics)
        self._runner = runner

    def observe(self) -> None:
        """From the offsets the runner saw and the watermarks :meth:`refresh` read (the consumer
        itself is the consume thread's)."""
        owned = self._runner._owned
        lag: dict[int, int] = {}
        for p in owned:
            end = self._ends.get(p, 0)
            base = self._committed.get(p, self._firsts.get(p))
            if end and base is not None:
                lag[p] = max(0, end - base)
        self._metrics.partitions(lag, owned=len(owned))

    def saw(self, records: list[Record]) -> None:
        """The end offsets are at least past the records taken."""
        ends = self._ends
        for r in records:
            if r.offset >= ends.get(r.partition, 0):
                ends[r.partition] = r.offset + 1

    async def refresh(self) -> None:
        consumer = self._runner._consumer
        if consumer is None:
            return
        topic = self._runner.settings.topics.events

        def ask() -> dict[int, tuple[int, int]]:
            # The watermarks of librdkafka's last fetch of each partition, which goes on in the
            # background until its local queue (64 MiB) is full: asking the broker instead is a
            # round trip per partition, on the thread every commit waits for (measured: an eighth
            # of its time, and the commits behind it).
            out = {}
            for p in list(self._runner._owned):
                with contextlib.suppress(KafkaException):
                    got = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                    if got is not None:
                        out[p] = got
            return out

        got = await self._runner._on_consumer(ask)
        for p, (low, high) in got.items():
            if high >= 0:
                self._ends[p] = max(high, self._ends.get(p, 0))
            if low >= 0:
                self._firsts[p] = low
        self.observe()


def producer_config(s: Settings, exactly_once: bool) -> dict[str, Any]:
    """The producer's librdkafka configuration."""
    conf: dict[str, Any] = {
        **s.kafka.librdkafka_config(),
        "acks": "all",
        "enable.idempotence": True,
        # A batch's outputs are produced at once and go out together: lingering for more
        # only delays them (aiokafka's record batches are sent as built, too).
        "linger.ms": 0,
        # Keys land where the Java client and streamer's own partitioner put them.
        "partitioner": "murmur2_random",
        "logger": logging.getLogger("streamer.kafka.librdkafka"),
    }
    if exactly_once:
        conf["transactional.id"] = f"{s.app_id}-{s.kafka.transactional_id}"
    return conf


def consumer_config(s: Settings, session_s: float, heartbeat: int) -> dict[str, Any]:
    """The consumer's librdkafka configuration: cooperative, read-committed, no auto commit."""
    return {
        **s.kafka.librdkafka_config(),
        "group.id": s.app_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": s.kafka.auto_offset_reset,
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": int(session_s * 1000),
        "heartbeat.interval.ms": heartbeat,
        "max.poll.interval.ms": 300_000,
        # A consumer with a backlog: librdkafka's default 1 s backoff stalls it.
        "fetch.queue.backoff.ms": 10,
        "logger": logging.getLogger("streamer.kafka.librdkafka"),
    }


class BatchProducer:
    """A batch's dead letters, window predictions and predictions, handed to the producer."""

    def __init__(self, producer: Producer, topics: TopicSettings):
        self.producer = producer
        self.topics = topics
        #: output topic -> its partition count
        self._counts: dict[str, int] = {}

    def produce(self, outcome: Outcome) -> asyncio.Future[None]:
        """Hand a batch's dead letters and outputs to the producer; the future resolves once the
        broker acknowledged all of them (or fails with the first error).

        Predictions go to the partition of their key (murmur2, as aiokafka's record batches and
        the Java client), and only the last one of each partition asks for its delivery report:
        the idempotent producer delivers a partition's messages in order, and a failed one fails
        those after it, so that report answers for the partition. (A report per message costs a
        Python call each, on another thread, fighting the loop for the GIL.)"""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        topics = self.topics
        messages: list[tuple[str, bytes | None, bytes | None, list[Any] | None]] = []
        for d in outcome.dead_letters:
            value, headers = dead_letter_message(d, topics)
            messages.append((topics.dead_letter, value, d.key, headers))
        keys, values, window_keys, window_values = outcome.encoded()
        windows = zip(window_keys, window_values, strict=True)
        messages += [(topics.windows, v, k, None) for k, v in windows]
        out = topics.predictions
        parts: list[int] = []
        last: dict[int, int] = {}
        if values:
            parts = partitions_of(keys, self.partitions(out)).tolist()
            last = {p: i for i, p in enumerate(parts)}
        if not messages and not values:
            done.set_result(None)
            return done
        left = [len(messages) + len(last)]
        lock = threading.Lock()

        def settle(exc: BaseException | None) -> None:
            if not done.done():
                if exc is None:
                    done.set_result(None)
                else:
                    done.set_exception(exc)

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            with lock:
                left[0] -= 1
                end = left[0] == 0
            if err is not None:
                loop.call_soon_threadsafe(settle, KafkaException(err))
            elif end:
                loop.call_soon_threadsafe(settle, None)

        produce = self.producer.produce
        for topic, value, key, extra in messages:
            self.put(produce, topic, value, key, delivered, extra)
        reported = set(last.values())
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            self.put(produce, out, value, key, delivered if i in reported else None, None, parts[i])
        return done

    def partitions(self, topic: str) -> int:
        """The partition count of an output topic (asked once)."""
        n = self._counts.get(topic)
        if n is None:
            meta = self.producer.list_topics(topic, timeout=30).topics[topic]
            if meta.error is not None or not meta.partitions:
                raise KafkaException(meta.error or KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
            n = self._counts[topic] = len(meta.partitions)
        return n

    def put(
        self,
        produce: Callable[..., None],
        topic: str,
        value: bytes | None,
        key: bytes | None,
        callback: Callable[..., None] | None,
        headers: list[Any] | None,
        partition: int = -1,
    ) -> None:
        while True:
            try:
                if headers:
                    produce(topic, value, key, on_delivery=callback, headers=headers)
                elif callback is not None:
                    produce(topic, value, key, partition, on_delivery=callback)
                else:
                    produce(topic, value, key, partition)
                return
            except BufferError:  # the producer's queue is full: let deliveries drain it
                self.producer.flush(0.05)
