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
    Producer,
    TopicPartition,
)

from streamer.kafka.clients import heartbeat_ms, session_timeout_s
from streamer.kafka.librdkafka import (
    FENCED,
    REFUSED,
    TRANSIENT,
    BatchProducer,
    ConfluentLag,
    Record,
    consumer_config,
    kafka_error,
    producer_config,
)
from streamer.kafka.runner import Queued, Runner, log
from streamer.serve.pipeline import Outcome

__all__ = ["ConfluentRunner"]

#: Batches the consume thread may hand the loop ahead of it.
_AHEAD = 2
#: How long the consume thread waits for a first record before it runs the calls handed to it
#: (it is woken at once for those while it waits for the loop to take a batch).
_POLL_S = 0.005
#: How long the loop waits for a batch before it looks after its idle chores.
_IDLE_S = 0.1


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
        #: the batches' outputs, handed to the producer
        self._out: BatchProducer
        #: partition -> the offset of a delivered batch whose commit the group refused while it
        #: rebalanced, committed with the next batch or while idle
        self._deferred: dict[int, int] = {}
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
        self.lag: ConfluentLag = ConfluentLag(self)

    async def start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._session_s = await session_timeout_s(s)
        self._producer = Producer(producer_config(self.settings, self.exactly_once))
        self._out = BatchProducer(self._producer, self.settings.topics)
        self._thread(self._serve_deliveries, "kafka-deliveries")
        if self.exactly_once:
            await self._call(self._init_transactions)
        self._consumer = Consumer(
            consumer_config(self.settings, self._session_s, heartbeat_ms(self._session_s))
        )
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
                err = kafka_error(exc)
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
                    # The loop is behind: wait for it, or for a call. (A call handed over since
                    # the commands above ran is seen here, under the lock its notice takes:
                    # else the thread slept through it, and the loop with it, for up to 1 s.)
                    if self._ahead >= _AHEAD:
                        if self._commands.empty():
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
            self._deferred.pop(p, None)
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
            return (self._producer, [self._out.produce(outcome)])
        except KafkaException as exc:
            log.debug("queueing a batch's outputs failed (%s); sending them with retries", exc)
            return None

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
                    futures = first[1] if first is not None else [self._out.produce(outcome)]
                    await asyncio.gather(*futures)
                    if not await self._commit_or_defer(tps):
                        return True  # delivered; the offsets go with a later commit
                break
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is None:
                    raise
                if err.code() in FENCED or err.fatal():
                    raise  # another worker took this transactional id: stop
                if err.code() in REFUSED or not self._owns(offsets):
                    return self._refused(err, offsets)
                transient = err.retriable() or err.code() in TRANSIENT
                if not transient and not err.txn_requires_abort():
                    raise
                self._kafka_retried()
                log.warning("kafka delivery failed (%s); retrying in %.1fs", err.str(), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for tp, o in offsets.items():
            self._committed[tp.partition] = o
        return True

    async def _commit_or_defer(self, tps: list[TopicPartition]) -> bool:
        """Commit a delivered batch's offsets; False when the group refused them because it is
        rebalancing (at least once: the outputs are out, so nothing is stepped again; the
        partitions this worker keeps commit these offsets with its next batch, and those that
        move are read by their new owner from the last commit, the states' fence skipping what
        was applied). Rewinding every partition instead paused the kept ones for up to 0.8 s
        on each join."""
        batch = {tp.partition for tp in tps}
        topic = self.settings.topics.events
        earlier = [
            TopicPartition(topic, p, o)
            for p, o in self._deferred.items()
            if p in self._owned and p not in batch
        ]
        try:
            await self._on_consumer(self._commit, tps + earlier)
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is None or err.code() not in REFUSED:
                raise
            self.stats.commit_failures += 1
            self.metrics.commit_failures.inc()
            for tp in tps:
                self._deferred[tp.partition] = tp.offset
            log.info("commit refused (%s); its offsets go with the next commit", err.str())
            return False
        for tp in earlier:
            self._committed[tp.partition] = tp.offset
        for p in batch | {tp.partition for tp in earlier}:
            self._deferred.pop(p, None)
        return True

    async def _trim(self) -> None:
        """While idle: the offsets of refused commits first, then the outbox."""
        if self._deferred and not self.exactly_once:
            owned = [(p, o) for p, o in self._deferred.items() if p in self._owned]
            if owned:
                topic = self.settings.topics.events
                with contextlib.suppress(KafkaException):  # refused again: the next time
                    await self._on_consumer(
                        self._commit, [TopicPartition(topic, p, o) for p, o in owned]
                    )
                    for p, o in owned:
                        if p in self._owned:  # (not revoked meanwhile)
                            self._committed[p] = o
                        self._deferred.pop(p, None)
        await super()._trim()

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
        self._out.produce(outcome)

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
