"""Comparison workers for the throughput benchmark: what streamer's worker is measured against.

    python bench/baselines.py KIND --bootstrap HOST:PORT --input TOPIC --output TOPIC --group GROUP
        [--partitions N] [--redis-url URL --model DIR --prefix PREFIX]

Each KIND is one consumer process of group GROUP that reads every message of ``--input`` from the
earliest offset and writes one message per input message to ``--output``. It runs until SIGTERM or
SIGINT, then leaves the group and exits. The three kinds bracket streamer's worker:

``naive``
    The same job as streamer, written the way a Faust tutorial leads one to write it: a Faust agent
    that, for each event, decodes the JSON, GETs the entity's state from Redis, applies streamer's
    per-entity scaling, steps the model at batch size 1, SETs the state back and sends the forecast.
    It has none of streamer's guarantees (no offset fence, no kept outputs, no dead letters) and
    its own simple state format, under ``{prefix}:{unique_id}``. The benchmark's question: what do
    streamer's batches buy over the obvious implementation? Needs ``--model`` and ``--redis-url``.
``faust-pass``
    A Faust agent that forwards each message unchanged: the ceiling of any per-message Faust agent,
    whatever it computes. The gap between it and ``naive`` is the cost of the per-event work.
``raw-pass``
    Plain aiokafka that forwards each message unchanged, a batch at a time (getmany, send all,
    await the deliveries, commit): the ceiling of an aiokafka consumer on this machine, and so of
    streamer's worker, whose Kafka loop has the same shape.
``raw-pass-eos``
    The same in transactions (exactly-once: one transaction per batch, the offsets sent to it,
    read_committed input), as streamer's ``exactly_once`` mode.
``ck-pass``
    confluent-kafka (librdkafka) in the same loop: ``consume`` up to 1,000 messages, ``produce``
    each with a delivery callback, ``flush``, then commit what was consumed (so only what was
    delivered). Tuned as the client's own documentation and issues suggest for a consumer with a
    backlog: 8 MiB per partition fetch, 10 ms fetch queue backoff (the default 1 s stalls it), and
    the ``murmur2_random`` partitioner so that keys land where the Java client (and streamer) put
    them.
``ck-pass-eos``
    ``ck-pass`` in transactions, with the consumer group's metadata sent with the offsets (KIP-447).

The output of ``naive`` is ``{"unique_id", "ds", "forecast"}`` with ``ds`` copied from the event; the
pass kinds echo the value byte for byte. Either way the harness can read the produce time it put in
``ds`` back from the output. Both Faust kinds run with a 5 ms producer linger and acks from all
replicas (Faust's default; it enables idempotence only with exactly-once processing); raw-pass uses
the producer of streamer's worker: acks="all", idempotence, 5 ms linger. All consumers use a 10 s
session timeout, streamer's default.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import struct
import tempfile
from pathlib import Path
from typing import Any

import faust
import numpy as np
import orjson
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from streamer import scaling
from streamer.kafka import send_keyed
from streamer.model import SequenceModel
from streamer.model.artifact import load_artifact

KINDS = ("naive", "faust-pass", "raw-pass", "raw-pass-eos", "ck-pass", "ck-pass-eos")
#: Producer linger of every kind, as streamer's worker (``STREAMER_KAFKA__PRODUCER_LINGER_MS``).
LINGER_MS = 5
#: Consumer session timeout of every kind, as streamer's worker (``STREAMER_KAFKA__SESSION_TIMEOUT_S``).
SESSION_TIMEOUT_S = 10.0
#: raw-pass: records per getmany, and how long one waits for the first.
MAX_RECORDS = 1000
POLL_TIMEOUT_MS = 100

#: naive state header: step count (int64), then the scaling statistics count, mean, var (float64);
#: h and c follow as float32, shape (L, 1, H) each.
HEADER = struct.Struct("<qddd")


def faust_app(args: argparse.Namespace, datadir: Path) -> faust.App:
    """A Faust app with raw keys and values, no web server and no tables; its group is GROUP."""
    return faust.App(
        args.group,
        broker=";".join(f"kafka://{b}" for b in args.bootstrap.split(",")),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=args.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=SESSION_TIMEOUT_S / 3,
        producer_linger=LINGER_MS / 1000,
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        datadir=str(datadir),
    )


def add_pass_agent(app: faust.App, args: argparse.Namespace) -> None:
    source = app.topic(args.input)
    out = app.topic(args.output)

    @app.agent(source)
    async def forward(stream: faust.StreamT[bytes]) -> None:
        async for key, value in stream.items():
            await out.send(key=key, value=value)


class NaiveState:
    """One entity's state in the naive kind's own format: a header, then h and c."""

    def __init__(self, model: SequenceModel) -> None:
        self.layers = model.spec.num_layers
        self.hidden = model.spec.hidden_size

    def zero(self) -> tuple[int, scaling.Stats, torch.Tensor, torch.Tensor]:
        z = np.zeros(1)
        h = torch.zeros(self.layers, 1, self.hidden)
        return 0, (z, z, z), h, h.clone()

    def decode(self, raw: bytes) -> tuple[int, scaling.Stats, torch.Tensor, torch.Tensor]:
        step, count, mean, var = HEADER.unpack_from(raw)
        hc = np.frombuffer(raw, np.float32, offset=HEADER.size).reshape(2, self.layers, 1, -1)
        h, c = torch.from_numpy(hc.copy())
        return step, (np.array([count]), np.array([mean]), np.array([var])), h, c

    @staticmethod
    def encode(step: int, stats: scaling.Stats, h: torch.Tensor, c: torch.Tensor) -> bytes:
        count, mean, var = (float(s[0]) for s in stats)
        return HEADER.pack(step, count, mean, var) + h.numpy().tobytes() + c.numpy().tobytes()


def add_naive_agent(app: faust.App, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    model = load_artifact(args.model).model
    if model.spec.features:
        raise SystemExit(f"{args.model}: the naive baseline serves models without features")
    states = NaiveState(model)
    redis = Redis.from_url(args.redis_url)
    source = app.topic(args.input)
    out = app.topic(args.output)

    @app.agent(source)
    async def predict(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            event = orjson.loads(value)
            uid = event["unique_id"]
            key = f"{args.prefix}:{uid}"
            raw = await redis.get(key)
            step, stats, h, c = states.zero() if raw is None else states.decode(raw)
            stats = scaling.update(stats, np.array([float(event["y"])]))
            mean, scale = stats[1][0], scaling.scale_of(stats)[0]
            x = torch.tensor([[(event["y"] - mean) / scale]], dtype=torch.float32)
            with torch.inference_mode():
                y, (h, c) = model.step(x, (h, c))
            forecast = (y[0].double().numpy() * scale + mean).tolist()
            await redis.set(key, states.encode(step + 1, stats, h, c))
            await out.send(
                key=uid.encode(),
                value=orjson.dumps({"unique_id": uid, "ds": event["ds"], "forecast": forecast}),
            )


def run_faust(args: argparse.Namespace) -> None:
    """Build the app for KIND and run its worker until SIGTERM or SIGINT."""
    with tempfile.TemporaryDirectory(prefix="bench-faust-") as tmp:
        app = faust_app(args, Path(tmp))
        (add_naive_agent if args.kind == "naive" else add_pass_agent)(app, args)
        worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
        # At log level WARN and above the worker draws a terminal spinner, and to drive it sets the
        # root logger to DEBUG: every debug call of Faust and aiokafka then builds a log record
        # (three per forwarded message, about a fifth of faust-pass's time). No spinner, no DEBUG.
        worker.spinner = None
        worker.execute_from_commandline()


async def raw_pass(args: argparse.Namespace, transactional: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        args.input,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if transactional else "read_uncommitted",
        max_poll_records=MAX_RECORDS,
        session_timeout_ms=int(SESSION_TIMEOUT_S * 1000),
        heartbeat_interval_ms=int(SESSION_TIMEOUT_S * 1000 / 3),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=LINGER_MS,
        max_batch_size=512 * 1024,
        transactional_id=f"{args.group}-{os.getpid()}" if transactional else None,
    )
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_RECORDS)
            messages = [(r.key, r.value) for records in batch.values() for r in records]
            if not messages:
                continue
            if transactional:
                async with producer.transaction():
                    await send_keyed(producer, args.output, messages)
                    offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                    await producer.send_offsets_to_transaction(offsets, args.group)
            else:
                await asyncio.gather(*await send_keyed(producer, args.output, messages))
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def ck_pass(args: argparse.Namespace, transactional: bool) -> None:
    """confluent-kafka's consume, produce, flush (or commit the transaction), commit loop."""
    from confluent_kafka import Consumer, KafkaException, Producer

    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed" if transactional else "read_uncommitted",
            "session.timeout.ms": int(SESSION_TIMEOUT_S * 1000),
            "heartbeat.interval.ms": int(SESSION_TIMEOUT_S * 1000 / 3),
            "max.partition.fetch.bytes": 8 * 2**20,
            "fetch.queue.backoff.ms": 10,
        }
    )
    conf = {
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": LINGER_MS,
        "partitioner": "murmur2_random",
    }
    if transactional:
        conf["transactional.id"] = f"{args.group}-{os.getpid()}"
    producer = Producer(conf)
    failed: list[Exception] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(KafkaException(err))

    consumer.subscribe([args.input])
    if transactional:
        producer.init_transactions()
    try:
        while not stopping:
            # consume(n, timeout) waits the whole timeout for n messages: wait for the first
            # only, then take what has come (as streamer's worker does).
            first = consumer.poll(POLL_TIMEOUT_MS / 1000)
            if first is None:
                continue
            messages = [first, *consumer.consume(MAX_RECORDS - 1, 0)]
            if transactional:
                producer.begin_transaction()
            for m in messages:
                if m.error() is None:
                    producer.produce(args.output, m.value(), m.key(), on_delivery=delivered)
            if transactional:
                producer.send_offsets_to_transaction(
                    consumer.position(consumer.assignment()),
                    consumer.consumer_group_metadata(),
                )
                producer.commit_transaction()
            else:
                producer.flush()
                if failed:
                    raise failed[0]
                consumer.commit(asynchronous=True)
    finally:
        consumer.close()
        producer.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT[,HOST:PORT...]")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True, help="consumer group (and Faust app id)")
    ap.add_argument("--partitions", type=int, default=8, help="of the input topic (Faust)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="naive only")
    ap.add_argument("--model", type=Path, help="model artifact directory, naive only")
    ap.add_argument("--prefix", default="bench:naive", help="state key prefix, naive only")
    args = ap.parse_args()
    if args.kind == "naive" and args.model is None:
        ap.error("naive needs --model")
    if args.kind.startswith("raw-pass"):
        asyncio.run(raw_pass(args, transactional=args.kind.endswith("-eos")))
    elif args.kind.startswith("ck-pass"):
        ck_pass(args, transactional=args.kind.endswith("-eos"))
    else:
        run_faust(args)


if __name__ == "__main__":
    main()
