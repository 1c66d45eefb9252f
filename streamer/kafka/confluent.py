"""The worker's hot loop on confluent-kafka (librdkafka), the other client of
``STREAMER_KAFKA__CLIENT``.

Same loop and the same rules as :class:`~streamer.kafka.runner.Runner` (take a batch, step it, save,
deliver, commit, in order); what differs is how the loop meets the client, which blocks where
aiokafka awaits:

- **A consume thread** polls the consumer and hands the loop whole batches (at most two waiting:
  the thread stops fetching while the loop is behind). librdkafka calls the rebalance callbacks
  from inside that poll, on that thread; each callback hands its work to the loop and waits for it,
  so a revocation still lets the batch in flight deliver and commit before the partitions move.
- **Cooperative rebalancing** (``cooperative-sticky``): a join or a leave revokes only the
  partitions that move; the others keep their fetch positions and their batches.
- **Generations per partition**, not one epoch for all: a batch fetched before one of its
  partitions was revoked loses that partition's records (they are another worker's now, or, given
  back to this one, fetched again from the committed offset), and keeps the others'.
- **A poll thread** serves the producer's delivery callbacks; a batch's outputs resolve one
  future when the last of them is acknowledged.
- **Every consumer call on the consume thread.** confluent-kafka's consumer lets one call in at a
  time, and a poll holds it: a commit from another thread waits until polling stops. So commits,
  seeks, watermarks and the group metadata are handed to the consume thread, which runs them
  between polls of at most 20 ms. The transactions (producer calls) run on a thread of their own.
- **Exactly once** sends the offsets to the transaction with the consumer group's metadata
  (KIP-447): a worker whose session expired while it stalled mid-transaction cannot commit it when
  it wakes up: the transaction is refused and aborted, and its batch is another worker's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import TopicPartition as AioTopicPartition
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streamer.kafka.clients import dead_letter_message, heartbeat_ms, session_timeout_s
from streamer.kafka.lag import Lag
from streamer.kafka.partitioning import partitions_of
from streamer.kafka.runner import Queued, Runner, log
from streamer.serve.pipeline import Outcome

__all__ = ["ConfluentRunner", "Record"]

#: Batches the consume thread may hand the loop ahead of it.
_AHEAD = 2
#: How long the consume thread waits for a first record before it runs the calls handed to it
#: (it is woken at once for those while it waits for the loop to take a batch).
_POLL_S = 0.005
#: How long the loop waits for a batch before it looks after its idle chores.
_IDLE_S = 0.1
#: Errors of a commit (or of offsets sent to a transaction) that mean the partitions moved on.
_REFUSED = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._STATE,
}
#: Errors that pass: the broker or its coordinator moved, restarted or is loading.
_TRANSIENT = {
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
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


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


def _error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


class _ConfluentLag(Lag):
    """:class:`~streamer.kafka.lag.Lag` read from librdkafka's watermarks."""

    def __init__(self, runner: ConfluentRunner):
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


class ConfluentRunner(Runner):
    """:class:`~streamer.kafka.runner.Runner` on confluent-kafka (see the module's notes)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._consumer: Any = None
        self._producer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: partition -> generation, bumped when it is revoked or lost
        self._gen: dict[int, int] = {}
        #: the partitions owned now
        self._owned: set[int] = set()
        #: batches from the consume thread: records, their partitions' generations when they
        #: were fetched, and how long the batch took to gather after its first record
        self._batches: asyncio.Queue[tuple[list[Record], dict[int, int], float]] = asyncio.Queue()
        #: wakes the consume thread: a batch taken (room for another), a consumer call handed over
        self._wake = threading.Condition()
        #: batches handed to the loop and not taken yet
        self._ahead = 0
        self._closing = threading.Event()
        self._calls = ThreadPoolExecutor(1, thread_name_prefix="kafka-calls")
        self._threads: list[threading.Thread] = []
        #: output topic -> its partition count
        self._partition_counts: dict[str, int] = {}
        #: a fatal error of the consume thread, raised by the loop
        self._thread_failed: BaseException | None = None
        #: the generations of the partitions of the batch taken last, when it was fetched
        self._taken_gens: dict[int, int] = {}
        #: partition -> the first offset taken since it was assigned, while nothing is committed
        self._base: dict[int, int] = {}
        #: consumer calls for the consume thread, with the futures of their results
        self._commands: queue.SimpleQueue[
            tuple[Callable[[], Any], concurrent.futures.Future[Any]]
        ] = queue.SimpleQueue()
        self.lag: _ConfluentLag = _ConfluentLag(self)

    # ------------------------------------------------------------------------------ clients --

    def _new_producer(self) -> Producer:
        s = self.settings
        conf = {
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
        if self.exactly_once:
            conf["transactional.id"] = f"{s.app_id}-{s.kafka.transactional_id}"
        return Producer(conf)

    def _new_consumer(self) -> Consumer:
        s = self.settings
        return Consumer(
            {
                **s.kafka.librdkafka_config(),
                "group.id": s.app_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": s.kafka.auto_offset_reset,
                "isolation.level": "read_committed",
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": int(self._session_s * 1000),
                "heartbeat.interval.ms": heartbeat_ms(self._session_s),
                "max.poll.interval.ms": 300_000,
                # A consumer with a backlog: librdkafka's default 1 s backoff stalls it.
                "fetch.queue.backoff.ms": 10,
                "logger": logging.getLogger("streamer.kafka.librdkafka"),
            }
        )

    async def start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._session_s = await session_timeout_s(s)
        self._producer = self._new_producer()
        self._thread(self._serve_deliveries, "kafka-deliveries")
        if self.exactly_once:
            await self._call(self._init_transactions)
        self._consumer = self._new_consumer()
        self._consumer.subscribe(
            [s.topics.events],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._thread(self._consume, "kafka-consume")
        log.info(
            "consuming %s as group %s (%s, confluent-kafka, session timeout %.1f s)",
            s.topics.events,
            s.app_id,
            s.processing_guarantee,
            self._session_s,
        )

    def _init_transactions(self) -> None:
        """Fence the predecessor with this transactional id (its open transaction is aborted),
        waiting for the broker as long as it takes."""
        while not self._closing.is_set():
            try:
                self._producer.init_transactions(30)
                return
            except KafkaException as exc:
                err = _error(exc)
                if err is None or not err.retriable():
                    raise
                log.warning("kafka init_transactions failed (%s); retrying", err)

    def _thread(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A blocking client call, on the calls thread."""
        return await asyncio.get_running_loop().run_in_executor(self._calls, fn, *args)

    async def _on_consumer(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A consumer call, run by the consume thread between two polls."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._commands.put((lambda: fn(*args), done))
        with self._wake:
            self._wake.notify()
        return await asyncio.wrap_future(done)

    def _run_commands(self) -> None:
        while True:
            try:
                call, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                done.set_result(call())
            except BaseException as exc:
                done.set_exception(exc)

    def _serve_deliveries(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.05)

    # ---------------------------------------------------------------------- consume thread --

    def _consume(self) -> None:
        """Poll batches (and the rebalance callbacks) until the runner closes."""
        assert self._loop is not None
        size = self.settings.batch.max_size
        consumer = self._consumer
        try:
            while not self._closing.is_set():
                self._run_commands()
                with self._wake:
                    if self._ahead >= _AHEAD:  # the loop is behind: wait for it (or a call)
                        self._wake.wait(1.0)
                        continue
                # poll waits for a first message only; consume(n, 0) then takes what has come.
                first = consumer.poll(_POLL_S)
                if first is None:
                    continue
                started = time.monotonic()
                got = [first, *consumer.consume(size - 1, 0)] if size > 1 else [first]
                waited = time.monotonic() - started
                records = []
                for m in got:
                    err = m.error()
                    if err is None:
                        records.append(Record(m))
                    elif err.fatal():
                        raise KafkaException(err)
                    else:
                        log.warning("kafka consumer: %s", err)
                if not records:
                    continue
                gens = dict(self._gen)
                with self._wake:
                    self._ahead += 1
                self._loop.call_soon_threadsafe(self._batches.put_nowait, (records, gens, waited))
        except BaseException as exc:  # the loop raises it
            self._thread_failed = exc
            self._loop.call_soon_threadsafe(self._assigned.set)

    def _wait(self, coro: Any) -> Any:
        """Run ``coro`` on the loop from the consume thread and wait for it, running the consumer
        calls handed over meanwhile: a revocation waits for the batch in flight to commit, and
        the commit is such a call."""
        assert self._loop is not None
        done = asyncio.run_coroutine_threadsafe(coro, self._loop)
        while True:
            try:
                return done.result(timeout=_POLL_S)
            except concurrent.futures.TimeoutError:
                self._run_commands()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = consumer.committed(partitions, timeout=30) if partitions else []
        self._wait(self._assigned_now({tp.partition: tp.offset for tp in committed}))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._wait(self._revoked_now({tp.partition for tp in partitions}, settle=True))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._wait(self._revoked_now({tp.partition for tp in partitions}, settle=False))

    async def _assigned_now(self, committed: dict[int, int]) -> None:
        for p, offset in committed.items():
            if offset >= 0:
                self._committed[p] = offset
            self._owned.add(p)
        self._assigned.set()
        if committed:
            log.info("partitions assigned: %s", sorted(committed))

    async def _revoked_now(self, partitions: set[int], settle: bool) -> None:
        """Partitions leave: the batch in flight delivers and commits first (a revocation), or
        is dropped (partitions lost: the group already gave them to others)."""
        if not self._stopping.is_set():
            async with self._lock:
                if settle:
                    with contextlib.suppress(Exception):  # a failed delivery stops the loop
                        await self._settle()
                self._forget(partitions)
        else:
            self._forget(partitions)
        if partitions:
            log.info("partitions %s: %s", "revoked" if settle else "lost", sorted(partitions))

    def _forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self._gen[p] = self._gen.get(p, 0) + 1
            self._committed.pop(p, None)
            self._base.pop(p, None)
            self._owned.discard(p)
        self.lag.forget(partitions)
        self.handler.predictor.forget_partitions(partitions)

    # ------------------------------------------------------------------------------ the loop --

    async def _take(self) -> list[Any]:
        if self._thread_failed is not None:
            raise self._thread_failed
        try:
            records, gens, waited = await asyncio.wait_for(self._batches.get(), _IDLE_S)
        except TimeoutError:
            return []
        with self._wake:
            self._ahead -= 1
            self._wake.notify()
        self.metrics.batch_wait.observe(waited)
        self._taken_gens = gens
        self.lag.saw(records)
        return records

    async def _still_ours(self, records: list[Any], epoch: int) -> list[Any]:
        """The records of partitions still owned in the generation they were fetched in. (Those
        dropped are fetched again: a revoked partition is read from its committed offset when it
        comes back, and a rewind seeks.)"""
        gens, now = self._taken_gens, self._gen
        ok = {p for p in self._owned if gens.get(p, 0) == now.get(p, 0)}
        out = [r for r in records if r.partition in ok]
        base = self._base
        for r in out:
            if r.partition not in base and r.partition not in self._committed:
                base[r.partition] = r.offset
        return out

    async def _queue(self, outcome: Outcome) -> Queued | None:
        try:
            return (self._producer, [self._produce(outcome)])
        except KafkaException as exc:
            log.debug("queueing a batch's outputs failed (%s); sending them with retries", exc)
            return None

    def _produce(self, outcome: Outcome) -> asyncio.Future[None]:
        """Hand a batch's dead letters and outputs to the producer; the future resolves once the
        broker acknowledged all of them (or fails with the first error).

        Predictions go to the partition of their key (murmur2, as aiokafka's record batches and
        the Java client), and only the last one of each partition asks for its delivery report:
        the idempotent producer delivers a partition's messages in order, and a failed one fails
        those after it, so that report answers for the partition. (A report per message costs a
        Python call each, on another thread, fighting the loop for the GIL.)"""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        topics = self.settings.topics
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
            parts = partitions_of(keys, self._partitions(out)).tolist()
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

        produce = self._producer.produce
        for topic, value, key, extra in messages:
            self._put(produce, topic, value, key, delivered, extra)
        reported = set(last.values())
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            self._put(
                produce, out, value, key, delivered if i in reported else None, None, parts[i]
            )
        return done

    def _partitions(self, topic: str) -> int:
        """The partition count of an output topic (asked once)."""
        n = self._partition_counts.get(topic)
        if n is None:
            meta = self._producer.list_topics(topic, timeout=30).topics[topic]
            if meta.error is not None or not meta.partitions:
                raise KafkaException(meta.error or KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
            n = self._partition_counts[topic] = len(meta.partitions)
        return n

    def _put(
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
                self._producer.flush(0.05)

    async def _deliver(
        self,
        outcome: Outcome,
        offsets: dict[AioTopicPartition, int],
        queued: Queued | None = None,
    ) -> bool:
        """Send and commit (or one transaction for both), retrying while Kafka is away; False
        when the commit was refused because the partitions moved on."""
        topic = self.settings.topics.events
        tps = [TopicPartition(topic, tp.partition, o) for tp, o in offsets.items()]
        delay = 0.2
        while True:
            try:
                if self.exactly_once:
                    group = await self._on_consumer(self._consumer.consumer_group_metadata)
                    await self._call(self._transaction, outcome, tps, group)
                else:
                    first, queued = queued, None
                    futures = first[1] if first is not None else [self._produce(outcome)]
                    await asyncio.gather(*futures)
                    await self._on_consumer(self._commit, tps)
                break
            except KafkaException as exc:
                err = _error(exc)
                if err is None:
                    raise
                if err.code() in _FENCED or err.fatal():
                    raise  # another worker took this transactional id: stop
                if err.code() in _REFUSED or not self._owns(offsets):
                    return self._refused(err, offsets)
                transient = err.retriable() or err.code() in _TRANSIENT
                if not transient and not err.txn_requires_abort():
                    raise
                self._kafka_retried()
                log.warning("kafka delivery failed (%s); retrying in %.1fs", err.str(), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for tp, o in offsets.items():
            self._committed[tp.partition] = o
        return True

    def _owns(self, offsets: dict[AioTopicPartition, int]) -> bool:
        return all(tp.partition in self._owned for tp in offsets)

    def _refused(self, err: KafkaError, offsets: dict[AioTopicPartition, int]) -> bool:
        """A commit refused: the partitions moved on (their new owner reads from the last
        commit), or a rebalance came between. The batches taken after this one are not delivered,
        and every partition still owned goes back to its committed offset (:meth:`_rewind_all`)."""
        self.stats.commit_failures += 1
        self.metrics.commit_failures.inc()
        self._epoch += 1
        log.warning("commit failed (%s); going back to the last committed offsets", err.str())
        self._rewind_all()
        return False

    def _rewind_all(self) -> None:
        """Send every owned partition back to its committed offset (or to the first offset taken
        since it was assigned, before any commit). Its records fetched until the seek is applied
        are dropped: the generation goes up now (for those already handed over) and again on the
        consume thread with the seek (for those of the polls in between)."""
        topic = self.settings.topics.events
        back = []
        for p in self._owned:
            self._gen[p] = self._gen.get(p, 0) + 1
            offset = self._committed.get(p, self._base.get(p))
            if offset is not None:
                back.append(TopicPartition(topic, p, offset))

        def seek() -> None:
            for tp in back:
                self._gen[tp.partition] = self._gen.get(tp.partition, 0) + 1
                try:
                    self._consumer.seek(tp)
                except KafkaException as exc:  # revoked meanwhile: read from the commit anyway
                    log.debug("seek %s failed: %s", tp, exc)

        self._commands.put((seek, concurrent.futures.Future()))
        with self._wake:
            self._wake.notify()

    def _commit(self, tps: list[TopicPartition]) -> None:
        self._consumer.commit(offsets=tps, asynchronous=False)

    def _transaction(self, outcome: Outcome, tps: list[TopicPartition], group: Any) -> None:
        """One transaction: the outputs and the offsets, sent with the group's metadata; aborted
        if any of it fails (the caller retries or gives the batch up)."""
        producer = self._producer
        producer.begin_transaction()
        try:
            assert self._loop is not None
            done = asyncio.run_coroutine_threadsafe(self._queue_in_loop(outcome), self._loop)
            done.result()
            producer.send_offsets_to_transaction(tps, group, 30)
            producer.commit_transaction(60)
        except BaseException:
            with contextlib.suppress(KafkaException):
                producer.abort_transaction(30)
            raise

    async def _queue_in_loop(self, outcome: Outcome) -> None:
        """Queue a transaction's messages (from the loop, where the futures live); the commit
        of the transaction waits for their delivery."""
        self._produce(outcome)

    # ---------------------------------------------------------------------------------- stop --

    def assigned(self) -> set[Any]:
        topic = self.settings.topics.events
        return {AioTopicPartition(topic, p) for p in self._owned}

    async def stop(self) -> None:
        self._stopping.set()
        self._assigned.set()
        async with self._lock:
            try:
                await self._settle()
            except Exception as exc:
                log.warning("the last batch was not delivered: %s", exc)
        self._closing.set()
        with self._wake:
            self._wake.notify()
        loop = asyncio.get_running_loop()
        for t in self._threads:
            await loop.run_in_executor(None, t.join)
        if self._consumer is not None:
            # Leaves the group (its revocation callback runs here, on this thread's executor).
            await loop.run_in_executor(None, self._consumer.close)
        if self._producer is not None:
            await loop.run_in_executor(None, self._producer.flush, 10)
        self._calls.shutdown(wait=False)
