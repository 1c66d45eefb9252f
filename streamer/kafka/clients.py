"""Plain aiokafka helpers: topics, sending keyed messages in batches, replaying history, reading."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from streamer.errors import ConfigError
from streamer.kafka.partitioning import partitions_of
from streamer.settings import Settings, TopicSettings

if TYPE_CHECKING:
    from streamer.ops.metrics import Metrics
    from streamer.schemas import DeadLetter
    from streamer.serve.pipeline import BatchHandler, Outcome

log = logging.getLogger(__name__)

__all__ = [
    "RunnerStats",
    "count_batch",
    "dead_letter_message",
    "ensure_topics",
    "group_lag",
    "group_offsets",
    "heartbeat_ms",
    "queue_outcome",
    "read_topic",
    "replay_events",
    "send_keyed",
    "session_timeout_s",
    "worker_consumer",
    "worker_producer",
]


async def send_keyed(
    producer: AIOKafkaProducer, topic: str, messages: Sequence[tuple[bytes, bytes]]
) -> list[asyncio.Future[Any]]:
    """Queue keyed messages as one record batch per partition; returns the delivery futures.

    ``producer.send`` costs a coroutine, a partitioner call and an accumulator lookup per message;
    this fills aiokafka batch builders directly, each message in the partition Kafka's default
    partitioner picks for its key (:mod:`streamer.kafka.partitioning`), in the order given.
    """
    parts = sorted(await producer.partitions_for(topic))
    where = partitions_of([k for k, _ in messages], len(parts)).tolist()
    builders: dict[int, Any] = {}
    futures: list[asyncio.Future[Any]] = []
    for (key, value), at in zip(messages, where, strict=True):
        builder = builders.get(at)
        if builder is None or builder.append(key=key, value=value, timestamp=None) is None:
            if builder is not None:  # full: send it, start the next one
                builder.close()
                futures.append(await producer.send_batch(builder, topic, partition=parts[at]))
            builder = builders[at] = producer.create_batch()
            builder.append(key=key, value=value, timestamp=None)
    for at, builder in builders.items():
        builder.close()  # complete: goes out at once, without the producer's linger
        futures.append(await producer.send_batch(builder, topic, partition=parts[at]))
    return futures


def dead_letter_message(
    d: DeadLetter, topics: TopicSettings
) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """A dead letter's value and headers as sent: a value larger than the broker would take keeps
    its head, and a header says how long it was."""
    headers = list(d.headers(topics.events).items())
    value = d.value
    if value is not None and len(value) > topics.max_dead_letter_bytes:
        headers.append(("streamer-truncated-from", str(len(value)).encode()))
        value = value[: topics.max_dead_letter_bytes]
    return value, headers


async def queue_outcome(
    producer: AIOKafkaProducer, topics: TopicSettings, outcome: Outcome
) -> list[asyncio.Future[Any]]:
    """Hand a batch's dead letters and outputs to the producer (in that order, in the order of
    the batch); returns their delivery futures."""
    futures = []
    for d in outcome.dead_letters:
        value, headers = dead_letter_message(d, topics)
        futures.append(await producer.send(topics.dead_letter, value, key=d.key, headers=headers))
    keys, values, window_keys, window_values = outcome.encoded()
    if window_values:  # a window model's (or re-emitted ones): to their own topic
        futures += await send_keyed(
            producer, topics.windows, list(zip(window_keys, window_values, strict=True))
        )
    if values:
        futures += await send_keyed(
            producer, topics.predictions, list(zip(keys, values, strict=True))
        )
    return futures


async def tls_refusal(settings: Settings, timeout_s: float = 5.0) -> str | None:
    """Why TLS to the broker can never work, in one line, or None.

    aiokafka logs a failed handshake and reports only that it could not bootstrap, which reads as
    an outage: a client with the wrong CA bundle would wait forever. So after a failed start, one
    handshake with each bootstrap server, with the client's own TLS context, tells a certificate
    that does not verify (or a port that does not speak TLS) from a broker that is down.
    """
    k = settings.kafka
    if k.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = k.client_options()["ssl_context"]
    for server in k.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=host), timeout_s
            )
        except ssl.SSLCertVerificationError as exc:
            return (
                f"Kafka's TLS certificate at {server.strip()} did not verify "
                f"({exc.verify_message}); check STREAMER_KAFKA__SSL_CAFILE and the host name in "
                "STREAMER_KAFKA__BOOTSTRAP_SERVERS"
            )
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            continue  # closed mid-handshake: a broker going down, not a setting
        except ssl.SSLError as exc:
            return (
                f"no TLS handshake with Kafka at {server.strip()} ({exc.reason}): is it a "
                "listener without TLS? check STREAMER_KAFKA__SECURITY_PROTOCOL"
            )
        except (OSError, TimeoutError, ValueError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None
    return None


#: The shortest session timeout streamer picks by itself: heartbeats every 0.5 s leave a worker
#: whose event loop stalls (a long batch, a garbage collection) 2.5 s before it is taken for dead.
MIN_AUTO_SESSION_S = 3.0
#: The session timeout when the broker's minimum cannot be read (no DescribeConfigs permission).
FALLBACK_SESSION_S = 10.0


def heartbeat_ms(session_s: float) -> int:
    """The heartbeat interval for a session timeout: a sixth of it, at most 0.5 s, at least 0.1 s
    (either client)."""
    return int(1000 * max(0.1, min(session_s / 6, 0.5)))


async def session_timeout_s(settings: Settings) -> float:
    """The consumer session timeout to use: the setting, or else the broker's minimum
    (``group.min.session.timeout.ms``: 6 s on a stock broker), at least :data:`MIN_AUTO_SESSION_S`.
    The shorter it is, the sooner a killed worker's partitions move to the others."""
    if settings.kafka.session_timeout_s is not None:
        return settings.kafka.session_timeout_s
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, **settings.kafka.client_options()
    )
    key = "group.min.session.timeout.ms"
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        broker = str(cluster["brokers"][0]["node_id"])
        resource = ConfigResource(ConfigResourceType.BROKER, broker, {key: None})
        got = await admin.describe_configs([resource])
        entries = got[0].to_object()["resources"][0]["config_entries"]
        minimum = next(float(e["config_value"]) for e in entries if e["config_names"] == key)
    except (KafkaError, LookupError, ValueError, TypeError) as exc:
        # (a broker that cannot be reached now: the consumer waits for it, with this timeout)
        log.warning(
            "the broker's %s cannot be read (%s): session timeout %.0f s",
            key,
            type(exc).__name__,
            FALLBACK_SESSION_S,
        )
        return FALLBACK_SESSION_S
    finally:
        await admin.close()
    return max(MIN_AUTO_SESSION_S, minimum / 1000)


async def _start(settings: Settings, client: Any) -> None:
    """Start an aiokafka client, or close it and say in one line that the broker is unreachable."""
    try:
        await client.start()
    except KafkaConnectionError as exc:
        await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
        refused = await tls_refusal(settings)
        if refused:
            raise ConfigError(refused) from exc
        protocol = settings.kafka.security_protocol
        hint = {
            "SASL_PLAINTEXT": " (or it refused the SASL credentials)",
            "SASL_SSL": " (or it refused the SASL credentials, or the listener has no TLS)",
            "SSL": " (or the listener has no TLS)",
        }.get(protocol, "")
        raise ConfigError(
            f"cannot reach Kafka at {settings.kafka.bootstrap_servers}{hint}: {exc}"
        ) from exc


async def ensure_topics(settings: Settings, names: Sequence[str] | None = None) -> None:
    """Create the input, prediction, window prediction and dead-letter topics if they do not
    exist."""
    t = settings.topics
    wanted = list(names or (t.events, t.predictions, t.windows, t.dead_letter))
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, **settings.kafka.client_options()
    )
    await _start(settings, admin)
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, t.partitions, 1) for n in wanted if n not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was faster
                await admin.create_topics(new)
            # A broker that just started answers the creation before its metadata lists the new
            # topics: return once it does, so whoever looks next (a worker, `streamer doctor`)
            # finds them.
            deadline = asyncio.get_running_loop().time() + 15
            while set(wanted) - set(await admin.list_topics()):
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def replay_events(
    settings: Settings,
    rows: Iterable[dict[str, object]],
    *,
    rate: float | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send rows as events keyed by ``unique_id``, in the order given; at most ``rate`` per second.

    Returns the number sent once every send is acknowledged by the broker.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        linger_ms=5,
        acks="all",
        **settings.kafka.client_options(),
    )
    await _start(settings, producer)
    # A chunk goes out as one record batch per partition; with a rate, 10 ms worth at a time.
    size = max(1, min(1000, int(rate / 100))) if rate else 1000
    topic, sent, start = settings.topics.events, 0, time.monotonic()
    try:
        rows_left = iter(rows)
        while chunk := [
            (str(row["unique_id"]).encode(), orjson.dumps(row))
            for row in itertools.islice(rows_left, size)
        ]:
            await asyncio.gather(*await send_keyed(producer, topic, chunk))
            sent += len(chunk)
            if on_sent:
                on_sent(sent)
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    finally:
        await producer.stop()
    return sent


async def read_topic(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool = False,
    idle_timeout_s: float | None = None,
) -> AsyncIterator[tuple[bytes | None, bytes | None, int, int, list[tuple[str, bytes]]]]:
    """Yield ``(key, value, partition, offset, headers)`` from a topic without joining a group.

    Stops after ``idle_timeout_s`` seconds without a message, or never when it is None.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        isolation_level="read_committed",
        **settings.kafka.client_options(),
    )
    await _start(settings, consumer)
    try:
        last = time.monotonic()
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            got = False
            for records in batches.values():
                for r in records:
                    got = True
                    yield r.key, r.value, r.partition, r.offset, list(r.headers or ())
            now = time.monotonic()
            if got:
                last = now
            elif idle_timeout_s is not None and now - last > idle_timeout_s:
                return
    finally:
        await consumer.stop()


Offsets = dict[int, int]


async def group_offsets(
    admin: AIOKafkaAdminClient,
    consumer: AIOKafkaConsumer,
    group: str,
    partitions: Sequence[TopicPartition],
) -> tuple[Offsets, Offsets, Offsets]:
    """A consumer group's committed offsets (the partitions it committed on), and the partitions'
    first and end offsets (as ``consumer``'s isolation level sees them), by partition."""
    tps = list(partitions)
    offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
    committed = {tp.partition: om.offset for tp, om in offsets.items() if om.offset >= 0}
    end = await consumer.end_offsets(tps)
    start = await consumer.beginning_offsets(tps)
    return (
        committed,
        {tp.partition: o for tp, o in start.items()},
        {tp.partition: o for tp, o in end.items()},
    )


def group_lag(
    committed: Offsets, start: Offsets, end: Offsets, auto_offset_reset: str = "earliest"
) -> Offsets:
    """Events not yet committed, by partition: the end offset less the committed one, or, where
    the group committed nothing, less where it will start (the first offset, or the end).

    >>> group_lag({0: 8}, {0: 0, 1: 2}, {0: 10, 1: 5})
    {0: 2, 1: 3}
    >>> group_lag({}, {0: 0}, {0: 10}, "latest")
    {0: 0}
    """
    first = start if auto_offset_reset == "earliest" else end
    return {p: max(0, e - committed.get(p, first.get(p, e))) for p, e in end.items()}


#: Largest record batch the worker's producer builds; under the broker's default limit (1 MiB).
_MAX_RECORD_BATCH = 512 * 1024


def worker_producer(s: Settings, exactly_once: bool) -> AIOKafkaProducer:
    """The worker's aiokafka producer: idempotent, acks from all replicas, transactional in
    exactly-once mode."""
    return AIOKafkaProducer(
        bootstrap_servers=s.kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=s.kafka.producer_linger_ms,
        # A batch's predictions for one partition go out as one record batch (send_keyed).
        max_batch_size=_MAX_RECORD_BATCH,
        transactional_id=f"{s.app_id}-{s.kafka.transactional_id}" if exactly_once else None,
        **s.kafka.client_options(),
    )


def worker_consumer(s: Settings, session_s: float) -> AIOKafkaConsumer:
    """The worker's aiokafka consumer (not subscribed yet): no auto commit, read committed,
    batches of at most ``batch.max_size``, the session of ``session_s``."""
    return AIOKafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap_servers,
        group_id=s.app_id,
        enable_auto_commit=False,
        auto_offset_reset=s.kafka.auto_offset_reset,
        isolation_level="read_committed",
        max_poll_records=s.batch.max_size,
        session_timeout_ms=int(session_s * 1000),
        heartbeat_interval_ms=heartbeat_ms(session_s),
        # How long the group waits for the others to rejoin (each finishing its batch first):
        # not shorter than before the session timeout could be a few seconds.
        rebalance_timeout_ms=int(1000 * max(session_s, 10.0)),
        **s.kafka.client_options(),
    )


class RunnerStats:
    """Counters of one runner, for logs and metrics."""

    def __init__(self) -> None:
        self.batches = 0
        self.events = 0
        self.predictions = 0
        self.dead_letters = 0
        #: dead letters by reason (announced to ``streamer doctor``)
        self.dead_by_reason: Counter[str] = Counter()
        self.reemitted = 0
        self.redis_retries = 0
        self.kafka_retries = 0
        self.commit_failures = 0


def count_batch(
    stats: RunnerStats,
    metrics: Metrics,
    handler: BatchHandler,
    produced_ms: npt.NDArray[np.float64],
    outcome: Outcome,
    started: float,
) -> None:
    """Count a delivered batch in a worker's stats and metrics; ``produced_ms`` are its events'
    timestamps (milliseconds; -1 for none), ``started`` when its delivery began
    (``time.perf_counter``)."""
    done = time.time()
    st = stats
    st.batches += 1
    st.events += len(produced_ms)
    st.predictions += len(outcome.outputs)
    st.dead_letters += len(outcome.dead_letters)
    st.dead_by_reason.update(d.reason for d in outcome.dead_letters)
    st.reemitted += outcome.report.reemitted
    st.redis_retries += outcome.retries
    try:
        produced = produced_ms[produced_ms > 0]
        metrics.batch(
            size=len(produced_ms),
            report=outcome.report,
            predictions=len(outcome.outputs),
            dead_letters=outcome.dead_letters,
            latencies=np.maximum(done - produced / 1000.0, 0.0),
            delivery_s=time.perf_counter() - started,
        )
        metrics.stepped(outcome.report)
        metrics.cache(handler.predictor.cache)
        metrics.serving(handler.predictor.version)
    except Exception:  # a metric must never stop a worker whose batch was delivered
        log.exception("updating the metrics failed")
