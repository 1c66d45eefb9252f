"""The worker's hot loop on plain aiokafka: take a batch, process it, deliver, commit.

Faust handles each message one by one (about 135 µs of CPU per consumed event here), so the hot path
does not go through Faust streams: it fetches whole batches with ``getmany``, hands them to the
:class:`~streamer.serve.pipeline.BatchHandler`, and delivers and commits per batch. Faust still runs the
worker process around it (``workers/app.py``).

Per batch, in this order:

1. the handler validates, steps and saves the states (waiting out Redis outages);
2. dead letters and predictions are sent and their delivery awaited (retried while Kafka is away);
3. the batch's offsets are committed: with ``consumer.commit`` (at least once), or inside the
   same Kafka transaction as the outputs (``exactly_once``).

The save of step 1 and steps 2 and 3 of one batch run while the next batch is taken and stepped,
so the round trips to Redis and Kafka do not stall the loop; saves go in order, one at a time, and
a batch is delivered only once it is saved and the one before it committed, so commits stay in
order too (:mod:`streamer.serve.chain` keeps these rules).

A crash anywhere re-delivers the batch from the last commit: the offset fence in the states skips
the events already applied, and the outputs the states kept are sent again, identical. A rebalance
waits for the batch in flight to commit before partitions move.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RebalanceInProgressError,
)
from aiokafka.structs import OffsetAndMetadata

from streamer.errors import ConfigError
from streamer.kafka import queue_outcome
from streamer.kafka.clients import (
    FALLBACK_SESSION_S,
    RunnerStats,
    count_batch,
    session_timeout_s,
    tls_refusal,
    worker_consumer,
    worker_producer,
)
from streamer.kafka.lag import Lag, assignment
from streamer.ops.metrics import Metrics
from streamer.serve.chain import Finish
from streamer.serve.pipeline import BatchHandler, Outcome
from streamer.settings import Settings

__all__ = ["Runner", "RunnerStats"]

log = logging.getLogger("streamer.kafka.runner")
#: How long an idle worker waits for a record before it looks after its idle chores (the lag, the
#: outbox) and whether it was asked to stop.
_IDLE_POLL_S = 0.1
C = TypeVar("C", AIOKafkaConsumer, AIOKafkaProducer)
#: a batch's outputs handed to a producer: the producer, and their delivery futures
Queued = tuple[AIOKafkaProducer | None, list["asyncio.Future[Any]"]]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: Runner):
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # The batch in flight finishes, delivers and commits before the partitions move; a batch
        # taken across the rebalance is dropped (its partitions restart from the committed offset).
        self.runner._assigned.clear()
        async with self.runner._lock:
            with contextlib.suppress(Exception):  # a failed delivery stops the batch loop
                await self.runner._settle()  # the last batch delivers and commits first
            self.runner._epoch += 1
            for tp in revoked:
                self.runner._committed.pop(tp.partition, None)
            self.runner.lag.forget(tp.partition for tp in revoked)
            self.runner.handler.predictor.forget_partitions({tp.partition for tp in revoked})
        if revoked:
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        consumer = self.runner._consumer
        assert consumer is not None
        for tp in assigned:
            offset = await consumer.committed(tp)
            if offset is not None:
                self.runner._committed[tp.partition] = offset
        self.runner._epoch += 1
        self.runner._assigned.set()
        if assigned:
            log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))


class Runner:
    def __init__(self, settings: Settings, handler: BatchHandler, metrics: Metrics | None = None):
        self.settings = settings
        self.handler = handler
        self.stats = RunnerStats()
        self.metrics = metrics or Metrics()
        self.metrics.serving(handler.serving)
        handler.on_retry = self.metrics.redis_retries.inc  # counted as they happen
        self.exactly_once = settings.processing_guarantee == "exactly_once"
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        #: bumped by every rebalance: a batch taken across one is not processed
        self._epoch = 0
        #: set once the committed offsets of the current assignment are known
        self._assigned = asyncio.Event()
        #: partition -> committed offset (the next offset a restarted consumer reads)
        self._committed: dict[int, int] = {}
        #: the committed offsets the outbox was last trimmed to, while idle
        self.lag = Lag(lambda: self._consumer, self._committed, self.metrics)
        #: the consumer session timeout in use (the setting, or the broker's minimum)
        self._session_s = settings.kafka.session_timeout_s or FALLBACK_SESSION_S

    async def start(self) -> None:
        s = self.settings
        self._session_s = await session_timeout_s(s)
        self._producer = await self._start_with_retry(self._new_producer, "producer")
        self._consumer = await self._start_with_retry(self._new_consumer, "consumer")
        log.info(
            "consuming %s as group %s (%s, session timeout %.1f s)",
            s.topics.events,
            s.app_id,
            s.processing_guarantee,
            self._session_s,
        )

    def _new_producer(self) -> AIOKafkaProducer:
        return worker_producer(self.settings, self.exactly_once)

    def _new_consumer(self) -> AIOKafkaConsumer:
        consumer = worker_consumer(self.settings, self._session_s)
        consumer.subscribe([self.settings.topics.events], listener=_Rebalance(self))
        self._consumer = consumer  # the rebalance listener reads it during start
        return consumer

    async def _start_with_retry(self, make: Callable[[], C], what: str) -> C:
        """Start a client, waiting for an unreachable broker; a client that failed is rebuilt."""
        delay = 0.5
        while True:
            client = make()
            try:
                await client.start()
                return client
            except (KafkaConnectionError, KafkaTimeoutError) as exc:
                await client.stop()
                refused = await tls_refusal(self.settings)
                if refused:  # a certificate that does not verify: no wait makes it work
                    raise ConfigError(refused) from exc
                self._kafka_retried()
                log.warning("kafka %s cannot connect (%s); retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def run(self) -> None:
        """Process batches until :meth:`stop`."""
        assert self._consumer is not None
        while not self._stopping.is_set():
            self._raise_failed()
            await self._assigned.wait()
            epoch = self._epoch
            records = await self._take()
            if not records:
                await self._settle()  # surfaces a delivery failure while idle
                self.observe_partitions()
                await self._trim()
                continue
            async with self._lock:
                if self._stopping.is_set():
                    continue
                records = await self._still_ours(records, epoch)
                if records:
                    await self._process(records)

    async def _still_ours(self, records: list[Any], epoch: int) -> list[Any]:
        """The records of a batch this worker may process now: none if a rebalance came since
        it was taken (``epoch``), which sends their partitions back to the committed offsets;
        else those of the partitions it owns."""
        assert self._consumer is not None
        if epoch != self._epoch or not self._assigned.is_set():
            await self._rewind(records)
            return []
        owned = {tp.partition for tp in self._consumer.assignment()}
        return [r for r in records if r.partition in owned]

    async def _rewind(self, dropped: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Send the partitions of a batch taken across a rebalance back to their committed
        offsets. A fetch that was waiting when the partitions were assigned again returns records
        of the new assignment, read from its committed offsets, and moves the position past them:
        dropped without this, those events would never be stepped, and the next commit would skip
        them."""
        assert self._consumer is not None
        first: dict[int, int] = {}
        for r in dropped:
            first[r.partition] = min(r.offset, first.get(r.partition, r.offset))
        topic = self.settings.topics.events
        with contextlib.suppress(IllegalStateError):  # no assignment now: it resets anyway
            owned = self._consumer.assignment()
            back = []
            for p, offset in sorted(first.items()):
                tp = TopicPartition(topic, p)
                if tp in owned:
                    # The committed offset as read at the assignment (or since committed here);
                    # with none, the dropped batch's first offset. (aiokafka's seek_to_committed
                    # asks the broker, and leaves a partition committed at 0 or never alone.)
                    self._consumer.seek(tp, self._committed.get(p, offset))
                    back.append(p)
            if back:
                log.info(
                    "a batch taken across a rebalance was dropped; partitions %s read again "
                    "from their committed offsets",
                    back,
                )

    async def stop(self) -> None:
        self._stopping.set()
        self._assigned.set()  # release a loop waiting for an assignment
        async with self._lock:  # the batch in flight finishes; no new one starts
            try:
                await self._settle()
            except Exception as exc:  # not committed: consumed again after a restart
                log.warning("the last batch was not delivered: %s", exc)
            if self._consumer is not None:
                await self._consumer.stop()
            if self._producer is not None:
                await self._producer.stop()

    async def _take(self) -> list[ConsumerRecord[bytes, bytes]]:
        """:meth:`_gather`, or nothing once :meth:`stop` stopped the consumer meanwhile (what it
        had fetched is not committed: it is consumed again after a restart)."""
        try:
            return await self._gather()
        except ConsumerStoppedError:
            if self._stopping.is_set():
                return []
            raise

    async def _gather(self) -> list[ConsumerRecord[bytes, bytes]]:
        """The records already fetched, up to ``max_size``, as soon as there is one: a batch does
        not wait for events that have not come (``max_wait_s``, 0 by default, lets it wait that
        long for more). Under load the batch fills while the one before it is stepped; at a low
        rate each event goes on at once. Empty after ``_IDLE_POLL_S`` without a record."""
        assert self._consumer is not None
        consumer = self._consumer
        loop = asyncio.get_running_loop()
        size, wait = self.settings.batch.max_size, self.settings.batch.max_wait_s
        got = await consumer.getmany(timeout_ms=int(_IDLE_POLL_S * 1000), max_records=size)
        out = [r for recs in got.values() for r in recs]
        if not out:
            return out
        first = loop.time()
        while len(out) < size:  # what else the fetcher holds (a partition at a time), no waiting
            more = await consumer.getmany(timeout_ms=0, max_records=size - len(out))
            if not more:
                break
            out.extend(r for recs in more.values() for r in recs)
        deadline = first + wait
        while len(out) < size and not self._stopping.is_set():
            left = deadline - loop.time()
            if left <= 0:
                break
            more = await consumer.getmany(timeout_ms=int(left * 1000), max_records=size - len(out))
            out.extend(r for recs in more.values() for r in recs)
        self.metrics.batch_wait.observe(loop.time() - first)
        return out

    async def _process(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Step a batch; it is saved, delivered and committed in the background, in order
        (:class:`~streamer.serve.chain.Chain`): the next batch is taken and stepped meanwhile."""
        topic = self.settings.topics.events
        # The next offset to read, per partition (records of a partition come in offset order).
        last = {r.partition: r.offset for r in records}
        offsets = {TopicPartition(topic, p): o + 1 for p, o in last.items()}
        deliver = functools.partial(self._delivered, records, offsets, self._epoch)
        await self.handler.begin(records, committed=dict(self._committed), deliver=deliver)

    def _raise_failed(self) -> None:
        """Raise the failure of a delivery that already ended (a fenced producer, a save or a
        Kafka error that waiting cannot fix): the loop stops before taking another batch."""
        self.handler.chain.raise_failed()

    async def _settle(self) -> None:
        """Wait for the batch being delivered; its failure (a fenced producer, a non-retriable
        error) is raised here and stops the loop."""
        await self.handler.chain.settle()

    async def _delivered(
        self,
        records: list[ConsumerRecord[bytes, bytes]],
        offsets: dict[TopicPartition, int],
        epoch: int,
        outcome: Outcome,
    ) -> Finish:
        """Send a saved batch's outputs (the chain calls it once those of the batch before it are
        on their way) and return the rest of its delivery: wait for them, commit, count (called
        once the batch before it is committed). Nothing at all when a commit failed since it was
        taken: the consumer went back to the committed offsets, and the events come again (their
        states skip them and send their kept outputs again). In exactly-once mode the outputs and
        the offsets go in one transaction, all of it in the second part."""
        started = time.perf_counter()
        queued: Queued | None = None
        if epoch == self._epoch and not self.exactly_once:
            queued = await self._queue(outcome)

        async def finish() -> None:
            if epoch != self._epoch:
                return
            if not await self._deliver(outcome, offsets, queued):
                return  # not committed: the batch is consumed again, and counted then
            self._count(records, outcome, started)

        return finish

    async def _queue(self, outcome: Outcome) -> Queued | None:
        """Hand a batch's outputs to the producer; None if that failed (they are sent again,
        with retries, by the second part of the delivery)."""
        try:
            assert self._producer is not None
            return (
                self._producer,
                await queue_outcome(self._producer, self.settings.topics, outcome),
            )
        except KafkaError as exc:
            log.debug("queueing a batch's outputs failed (%s); sending them with retries", exc)
            return None

    def _count(
        self, records: list[ConsumerRecord[bytes, bytes]], outcome: Outcome, started: float
    ) -> None:
        """The stats and metrics of a committed batch."""
        produced = np.array([r.timestamp for r in records], np.float64)
        count_batch(self.stats, self.metrics, self.handler, produced, outcome, started)
        self.observe_partitions()

    async def _trim(self) -> None:
        """At rest: let the store drop the kept predictions of what is committed (the outbox of
        the last batches), so that Redis holds only the states."""
        await self.handler.predictor.trim_at_rest(self._committed)

    def _kafka_retried(self) -> None:
        self.stats.kafka_retries += 1
        self.metrics.kafka_retries.inc()

    def assigned(self) -> set[TopicPartition]:
        """The partitions this worker owns now (none before it joined the group)."""
        return assignment(self._consumer)

    def observe_partitions(self) -> None:
        """Publish the owned partitions' lag (:class:`~streamer.kafka.lag.Lag`)."""
        self.lag.observe()

    async def refresh_lag(self) -> None:
        """Ask the broker for the owned partitions' end offsets and publish their lag."""
        await self.lag.refresh()

    async def _send_all(self, outcome: Outcome, queued: Queued | None = None) -> None:
        """Send a batch's dead letters and outputs and wait for the broker to take them all; the
        futures of ``queued`` if they were queued on the producer in use."""
        if queued is not None and queued[0] is self._producer:
            futures = queued[1]
        else:
            assert self._producer is not None
            futures = await queue_outcome(self._producer, self.settings.topics, outcome)
        await asyncio.gather(*futures)

    async def _deliver(
        self, outcome: Outcome, offsets: dict[TopicPartition, int], queued: Queued | None = None
    ) -> bool:
        """Send the outputs (or wait for those ``queued``) and commit the offsets, retrying while
        Kafka is unavailable (a retry sends them all again); False when the commit was refused
        (the partitions moved on)."""
        assert self._consumer is not None and self._producer is not None
        delay = 0.2
        while True:
            try:
                if self.exactly_once:
                    await self._producer.begin_transaction()
                    try:
                        await self._send_all(outcome)
                        await self._producer.send_offsets_to_transaction(
                            {tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()},
                            self.settings.app_id,
                        )
                        await self._producer.commit_transaction()
                    except BaseException:
                        try:
                            await self._producer.abort_transaction()
                        except KafkaError as exc:
                            log.warning("aborting the transaction failed: %s", exc)
                        raise
                else:
                    first, queued = queued, None  # (a retry queues them again)
                    await self._send_all(outcome, first)
                    await self._consumer.commit(offsets)
                break
            except ProducerFenced:
                raise
            except OutOfOrderSequenceNumber as exc:
                if self.exactly_once:
                    raise  # a transaction cannot be sent again from a new producer here
                # The broker lost this producer's sequence numbers (it restarted mid-send); the
                # producer cannot go on. A new one sends the whole batch again: at least once,
                # some of its predictions may arrive twice (same values and identity).
                self._kafka_retried()
                log.warning(
                    "kafka delivery failed (%r); sending the batch from a new producer", exc
                )
                with contextlib.suppress(KafkaError):
                    await self._producer.stop()
                self._producer = await self._start_with_retry(self._new_producer, "producer")
            except (CommitFailedError, RebalanceInProgressError, IllegalStateError) as exc:
                # Partitions moved on: the new owner reads from the last commit, skips what these
                # states applied, and re-emits their kept outputs. The batches taken after this
                # one are not delivered, and this consumer too goes back to its last commit.
                self.stats.commit_failures += 1
                self.metrics.commit_failures.inc()
                self._epoch += 1
                log.warning("commit failed (%s); going back to the last committed offsets", exc)
                with contextlib.suppress(KafkaError, IllegalStateError):
                    assigned = self._consumer.assignment()
                    if assigned:
                        await self._consumer.seek_to_committed(*assigned)
                return False
            except KafkaError as exc:
                if not (exc.retriable or isinstance(exc, KafkaConnectionError | KafkaTimeoutError)):
                    raise  # waiting cannot fix it: stop the worker, the batch is not committed
                self._kafka_retried()
                log.warning("kafka delivery failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for tp, o in offsets.items():
            self._committed[tp.partition] = o
        return True
