"""Benchmark: streamer's worker against the naive way and the ceiling, on the real broker and Redis.

    python bench/throughput.py [--events N] [--entities N] [--latency-s S] [--memory-entities N]

(``make bench`` runs it with the defaults.) In one run, on the same broker and Redis:

- **streamer**: ``streamer worker``, the batched pipeline (state in Redis, one prediction per event);
- **streamer-cluster**: the same worker with its states in a Redis Cluster of three masters (ports
  27000-27002, started for it);
- **streamer-confluent**: the same worker on its other Kafka client, confluent-kafka;
- **streamer-next**: the same worker serving a next-event model of the same core over a vocabulary
  of ``--next-values`` values (a two-level softmax, top 10, surprise and rank), on a backlog of the
  same entities whose events carry a value of it (issue 19: at most twice streamer's worker CPU);
- **streamer-faust**: the Faust engine (``streamer worker --engine faust``): streamer's batch
  path as a Faust agent taking ``noack_take`` batches;
- **naive**: a hand-written Faust agent doing GET, one LSTM step, SET and send per event;
- **faust-pass**: a Faust agent that only consumes and sends (Faust's own ceiling);
- **raw-pass**: plain aiokafka fetching and sending in batches (the ceiling of an aiokafka
  consumer), and **raw-pass-eos** the same in transactions;
- **ck-pass**: confluent-kafka (librdkafka) in the same loop, tuned for a backlog, and
  **ck-pass-eos** in transactions with the group metadata (KIP-447): the other client's ceiling.

The baselines are in ``bench/baselines.py``. For each: events per second over a backlog of
``--events`` events of ``--entities`` entities (H=64, 2 layers, fp32), the worker's CPU per event
(and the broker's and Redis's), Redis memory per entity; then latency from produce to prediction at
one fixed offered rate, half of streamer's maximum, and at a low one (``--low-rate``, 100 events
per second) for the kinds that kept up with the first. Last, Redis memory per entity over
``--memory-entities`` float16 states written by the store. Prints a table on stderr and one JSON
document on stdout, also saved under ``build/bench/``. Starts its own Kafka and Redis (ports 29092
and 26379) unless ``--bootstrap`` and ``--redis-url`` are given. Never part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamer.kafka import send_keyed
from streamer.model import ModelSpec, SequenceModel
from streamer.model.artifact import save_artifact
from streamer.model.vocab import groups_for
from streamer.settings import Settings, to_env
from streamer.state import RedisStateStore
from streamer.state.batch import StateBatch, encode_many

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "deploy" / "local" / "services.sh"
SERVICES_DIR = Path.home() / ".cache" / "streamer" / "bench-services"
SERVICE_ENV = {
    "KAFKA_PORT": "29092",
    "KAFKA_CONTROLLER_PORT": "29093",
    "REDIS_PORT": "26379",
    "REDIS_CLUSTER_PORT": "27000",
    "STREAMER_SERVICES_DIR": str(SERVICES_DIR),
    # Every run's topics are new: a broker that is not running starts without the old ones.
    "KAFKA_FRESH": "1",
}
#: streamer-cluster is streamer's worker with its states in a Redis Cluster of three masters
KINDS = (
    "raw-pass",
    "raw-pass-eos",
    "ck-pass",
    "ck-pass-eos",
    "faust-pass",
    "streamer",
    "streamer-cluster",
    "streamer-confluent",
    "streamer-next",
    "streamer-faust",
    "naive",
)
#: the pass-through kinds: what a consumer of each client does with nothing to compute
PASS_KINDS = ("raw-pass", "raw-pass-eos", "ck-pass", "ck-pass-eos", "faust-pass")
CLUSTER_PORTS = [int(SERVICE_ENV["REDIS_CLUSTER_PORT"]) + i for i in range(3)]
CLOCK = os.sysconf("SC_CLK_TCK")


# -------------------------------------------------------------------------------- processes --


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads, from /proc."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK
    return float("nan")


def service_pid(name: str) -> int | None:
    port = SERVICE_ENV["KAFKA_PORT"] if name == "kafka" else SERVICE_ENV["REDIS_PORT"]
    return _pid(SERVICES_DIR / f"{name}-{port}" / f"{name}.pid")


def cluster_pids() -> list[int]:
    """The benchmark's Redis Cluster nodes."""
    where = SERVICES_DIR / f"redis-cluster-{SERVICE_ENV['REDIS_CLUSTER_PORT']}"
    return [p for p in (_pid(where / str(port) / "redis.pid") for port in CLUSTER_PORTS) if p]


def _pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None


def redis_urls(args: argparse.Namespace, kind: str) -> list[str]:
    """Where a kind's states live: the Redis, or each node of the Redis Cluster (the first one
    is the URL its workers are given)."""
    if kind == "streamer-cluster":
        return [f"redis://127.0.0.1:{port}/0" for port in CLUSTER_PORTS]
    return [str(args.redis_url)]


@dataclass
class Worker:
    kind: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        if self.proc.returncode is None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def stop_all(workers: Sequence[Worker]) -> None:
    """SIGTERM to all at once (no rebalance onto one that is about to go), then wait for each."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    for w in workers:
        w.stop()


@dataclass
class Run:
    """One benchmark run: its services, model and scratch space."""

    args: argparse.Namespace
    tmp: Path
    model_dir: Path
    #: streamer-next's model: a next-event model of the same core (:func:`next_model`)
    next_model_dir: Path | None = None
    run_id: str = field(default_factory=lambda: f"{int(time.time())}")
    #: more environment for streamer's workers, over the settings the benchmark gives them
    worker_env: dict[str, str] = field(default_factory=dict)
    #: streamer's workers' log level (``info`` logs their partition assignments)
    loglevel: str = "warning"

    @property
    def bootstrap(self) -> str:
        return str(self.args.bootstrap)

    def start(
        self,
        kind: str,
        ns: str,
        src: str,
        out: str,
        name: str | None = None,
        defaults: bool = False,
    ) -> Worker:
        """A worker of consumer group ``ns`` from ``src`` to ``out``, logging to ``{name}.log``.
        ``defaults``: streamer's own settings but where to connect and what to serve (else the
        benchmark's: a 6 s session, the batch, cache and thread options)."""
        log = self.tmp / f"{name or ns}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
        if kind.startswith("streamer"):
            kafka: dict[str, Any] = {"bootstrap_servers": self.bootstrap}
            if kind == "streamer-confluent":
                kafka["client"] = "confluent"
            engine = "faust" if kind == "streamer-faust" else "streamer"
            tuned: dict[str, Any] = {}
            if not defaults:
                kafka["session_timeout_s"] = 6
                tuned = {
                    "batch": {
                        "max_size": self.args.batch,
                        "max_wait_s": self.args.batch_wait_s,
                        "max_behind": self.args.behind,
                    },
                    "cache_max_mb": self.args.cache_mb,
                    "torch_threads": self.args.torch_threads,
                }
            next_kind = kind == "streamer-next" and self.next_model_dir is not None
            settings = Settings(
                app_id=ns,
                model_name=ns,
                model_path=self.next_model_dir if next_kind else self.model_dir,
                device="cpu",
                engine=engine,
                kafka=kafka,
                redis={
                    "url": redis_urls(self.args, kind)[0],
                    "cluster": kind == "streamer-cluster",
                },
                topics={"events": src, "predictions": out, "dead_letter": f"{ns}.dlq"},
                metrics={"port": 0},  # any free port: several workers, or a demo's on 9108
                **tuned,
            )
            env.update(to_env(settings))
            env.update(self.worker_env)
            cmd = [sys.executable, "-m", "streamer.ops.cli", "worker", "-l", self.loglevel]
        else:
            cmd = [
                sys.executable,
                str(ROOT / "bench" / "baselines.py"),
                kind,
                "--bootstrap",
                self.bootstrap,
                "--input",
                src,
                "--output",
                out,
                "--group",
                ns,
                "--partitions",
                str(self.args.partitions),
                "--redis-url",
                self.args.redis_url,
                "--model",
                str(self.model_dir),
                "--prefix",
                f"naive:{ns}",
            ]
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        return Worker(kind, proc, log)


# ------------------------------------------------------------------------------------ Kafka --


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


def event(entity: int, y: float) -> tuple[bytes, bytes]:
    uid = f"e{entity:07d}"
    body = {"unique_id": uid, "ds": str(time.time_ns()), "y": y}
    return uid.encode(), orjson.dumps(body)


def next_event(entity: int, value: int) -> tuple[bytes, bytes]:
    """An event of a next-event model's stream: its value of ``item`` (``v<value>``)."""
    uid = f"e{entity:07d}"
    body = {"unique_id": uid, "ds": str(time.time_ns()), "item": f"v{value}"}
    return uid.encode(), orjson.dumps(body)


async def new_producer(bootstrap: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=2, max_batch_size=512 * 1024
    )
    await producer.start()
    return producer


class Reader:
    """Reads an output topic from the start; counts messages and, on request, their latency."""

    def __init__(self, bootstrap: str, topic: str, latency_from_ns: int | None = None):
        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 * 2**20,
        )
        self.count = 0
        #: messages per partition of the topic
        self.by_partition: dict[int, int] = {}
        self.first_at: float | None = None
        #: produce-to-receive latency in ms of messages whose ``ds`` is at or after this
        self.latency_from_ns = latency_from_ns
        self.latencies_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            got = await self.consumer.getmany(timeout_ms=50, max_records=20000)
            now_ns = time.time_ns()
            for tp, records in got.items():
                self.count += len(records)
                n = self.by_partition.get(tp.partition, 0)
                self.by_partition[tp.partition] = n + len(records)
                if self.latency_from_ns is not None:
                    for r in records:
                        ds = int(orjson.loads(r.value)["ds"])
                        if ds >= self.latency_from_ns:
                            self.latencies_ms.append((now_ns - ds) / 1e6)
                self.observe(records)
            if got and self.first_at is None:
                self.first_at = time.monotonic()

    def observe(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Called with every fetched run of messages of one partition: for subclasses."""

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


async def wait_for(
    cond: Callable[[], bool],
    timeout: float,
    worker: Worker | Sequence[Worker],
    what: str,
    step: float = 0.05,
) -> bool:
    """Wait until ``cond()``; False after ``timeout`` seconds; raises if a worker exits."""
    workers = [worker] if isinstance(worker, Worker) else list(worker)
    deadline = time.monotonic() + timeout
    while not cond():
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"{w.kind} exited ({w.proc.returncode}):\n{w.tail()}")
        if time.monotonic() > deadline:
            print(f"  {workers[0].kind}: {what} not reached in {timeout:.0f} s", file=sys.stderr)
            return False
        await asyncio.sleep(step)
    return True


# ------------------------------------------------------------------------------ the phases --


async def redis_memory(*urls: str) -> tuple[int, int]:
    """(used_memory, keys) of the Redis servers (summed over a cluster's nodes)."""
    used = keys = 0
    for url in urls:
        r = aioredis.Redis.from_url(url)
        try:
            info = await r.info("memory")
            used, keys = used + int(info["used_memory"]), keys + int(await r.dbsize())
        finally:
            await r.aclose()
    return used, keys


async def mean_value_size(*urls: str, sample: int = 500) -> float:
    """The mean size of a sample of the state records (strings; the outbox's sorted sets, the
    registry's hashes and the announcements are skipped)."""
    sizes = []
    for url in urls:
        r = aioredis.Redis.from_url(url)
        try:
            for _ in range(sample // len(urls)):
                key = await r.randomkey()
                if key is not None and await r.type(key) == b"string":
                    sizes.append(await r.strlen(key))
        finally:
            await r.aclose()
    return float(np.mean(sizes)) if sizes else 0.0


async def flush_redis(*urls: str) -> None:
    for url in urls:
        r = aioredis.Redis.from_url(url)
        try:
            await r.flushall()
        finally:
            await r.aclose()


async def throughput(
    run: Run,
    kind: str,
    src: str,
    workers: int = 1,
    settled: Callable[[list[Worker]], bool] | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """Events per second over the backlog in ``src`` (or until the time budget runs out), by
    ``workers`` processes in one consumer group (``bench-{kind}{tag}-{run id}``). The measurement
    starts past the first 2% of the outputs and, with ``settled``, once it holds of the workers
    (their group has settled; asked again at the end: ``settled_to_end``). With several workers:
    each one's CPU, and the outputs measured per partition."""
    args = run.args
    ns = f"bench-{kind}{tag}-{run.run_id}"
    out = f"{ns}.out"
    await create_topics(run.bootstrap, [out, f"{ns}.dlq"], args.partitions)
    urls = redis_urls(args, kind)
    await flush_redis(*urls)
    mem0, _ = await redis_memory(*urls)
    reader = Reader(run.bootstrap, out)
    await reader.start()
    started: list[Worker] = []
    pids = {"kafka": [service_pid("kafka")], "redis": [service_pid("redis")]}
    if kind == "streamer-cluster":
        pids["redis"] = list(cluster_pids())

    def cpu() -> tuple[dict[str, float], list[float]]:
        each = [cpu_seconds(w.proc.pid) for w in started]
        total = {"worker": sum(each)}
        total.update({k: sum(cpu_seconds(p) for p in ps if p) for k, ps in pids.items()})
        return total, each

    try:
        for i in range(workers):
            started.append(run.start(kind, ns, src, out, name=f"{ns}-{i}" if workers > 1 else None))
        await wait_for(lambda: reader.count > 0, 120, started, "first output")
        # Measure from the first 2% on: past the group join and the first batches.
        warm = max(1, args.events // 50)
        await wait_for(
            lambda: reader.count >= warm and (settled is None or settled(started)),
            args.budget_s,
            started,
            "warm-up",
        )
        t0, n0, by0 = time.monotonic(), reader.count, dict(reader.by_partition)
        profiled = kind.startswith("streamer") and getattr(args, "profile", False)
        spy = start_profile(run, started[0]) if profiled else None
        cpu0, each0 = cpu()
        await wait_for(lambda: reader.count >= args.events, args.budget_s, started, "all outputs")
        t1, n1, by1 = time.monotonic(), reader.count, dict(reader.by_partition)
        cpu1, each1 = cpu()
        still = settled(started) if settled is not None else None
        profile = stop_profile(spy) if spy is not None else None
    finally:
        stop_all(started)
        await reader.stop()
    n = n1 - n0
    result: dict[str, Any] = {
        "events_measured": n,
        "seconds": round(t1 - t0, 2),
        "events_per_second": round(n / (t1 - t0), 1),
        "finished_backlog": n1 >= args.events,
        "cpu_us_per_event": {
            k: round((cpu1[k] - cpu0[k]) / n * 1e6, 1) for k in cpu0 if k in cpu1 and n
        },
    }
    if still is not None:
        result["settled_to_end"] = still
    if workers > 1:
        result["worker_cpu_seconds"] = [round(b - a, 2) for a, b in zip(each0, each1, strict=True)]
        result["events_by_partition"] = {p: by1[p] - by0.get(p, 0) for p in sorted(by1)}
    if profile is not None:
        result["profile"] = profile
    if kind.startswith("streamer") or kind == "naive":
        mem1, keys = await redis_memory(*urls)
        payload = await mean_value_size(*urls)
        result["redis"] = {
            "entities": keys,
            "bytes_per_entity": round((mem1 - mem0) / max(keys, 1), 1),
            "value_bytes_mean": round(payload, 1),
        }
    return result


def start_profile(run: Run, worker: Worker) -> tuple[subprocess.Popen[bytes], Path]:
    """Sample the worker with py-spy (on CPU only: waiting threads are not counted)."""
    out = run.tmp / "streamer.collapsed"
    spy = Path(sys.executable).with_name("py-spy")
    cmd = [str(spy), "record", "--pid", str(worker.proc.pid), "--rate", "200"]
    cmd += ["--nonblocking", "--format", "raw", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out


def stop_profile(spy: tuple[subprocess.Popen[bytes], Path], top: int = 20) -> dict[str, Any]:
    """Where the worker's CPU went: the share of samples per innermost function and per module."""
    proc, out = spy
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    keep = Path(__file__).resolve().parents[1] / "build" / out.name  # the raw stacks, to read
    keep.parent.mkdir(exist_ok=True)
    shutil.copyfile(out, keep)
    by_function: dict[str, int] = {}
    by_module: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        name, _, where = leaf.partition(" (")
        path = where.rstrip(")").rsplit(":", 1)[0]
        if "site-packages/" in path:  # a dependency: its package
            module = path.split("site-packages/", 1)[1].split("/")[0]
        else:  # streamer's own modules, the standard library's (asyncio, selectors)
            module = f"{Path(path).parent.name}/{Path(path).name}"
        n = int(count)
        total += n
        key = f"{name} ({Path(path).name})"
        by_function[key] = by_function.get(key, 0) + n
        by_module[module] = by_module.get(module, 0) + n

    def share(d: dict[str, int]) -> dict[str, float]:
        best = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return {k: round(100 * v / total, 1) for k, v in best}

    return {
        "samples": total,
        "percent_by_function": share(by_function),
        "percent_by_package": share(by_module),
    }


async def offer(
    producer: AIOKafkaProducer,
    topic: str,
    rate: float,
    entities: int,
    rng: random.Random,
    done: Callable[[float], bool],
    tick: float = 0.005,
) -> tuple[int, float]:
    """Send events of random entities to ``topic`` at ``rate`` per second until ``done(seconds
    elapsed)``; once all are acknowledged, the number sent and the rate achieved."""
    sent, t_start = 0, time.monotonic()
    pending: list[asyncio.Future[Any]] = []
    while not done(elapsed := time.monotonic() - t_start):
        due = int(elapsed * rate) - sent
        if due > 0:
            batch = [event(rng.randrange(entities), rng.gauss(100, 10)) for _ in range(due)]
            pending += await send_keyed(producer, topic, batch)
            sent += due
        if len(pending) > 10_000:  # a long run: keep only the deliveries still open
            for f in pending:
                if f.done():
                    f.result()  # a failed delivery fails here
            pending = [f for f in pending if not f.done()]
        await asyncio.sleep(tick)
    await asyncio.gather(*pending)
    return sent, sent / (time.monotonic() - t_start)


#: A process that only sleeps 1 ms at a time and reports each wake-up this late (ns): what the
#: machine stalled while a latency phase ran (on a shared machine, other tenants' work).
_STALL_PROBE = """
import sys, time
late, prev = int(sys.argv[1]), time.monotonic_ns()
while True:
    time.sleep(0.001)
    now = time.monotonic_ns()
    if now - prev > late:
        print(now - prev, flush=True)
    prev = now
"""


@contextlib.contextmanager
def stall_probe(late_ms: float = 5.0) -> Iterator[dict[str, Any]]:
    """Stalls of the whole machine while the block runs: how many sleeps of 1 ms woke up more
    than ``late_ms`` late, and the longest. A latency tail that comes with stalls is the machine's,
    not the worker's."""
    found: dict[str, Any] = {}
    with tempfile.TemporaryFile() as out:
        probe = subprocess.Popen(
            [sys.executable, "-c", _STALL_PROBE, str(int(late_ms * 1e6))], stdout=out
        )
        try:
            yield found
        finally:
            probe.kill()
            probe.wait()
            out.seek(0)
            stalls = [int(x) / 1e6 for x in out.read().split()]
    found.update(
        over_ms=late_ms,
        count=len(stalls),
        longest_ms=round(max(stalls), 1) if stalls else 0.0,
        total_ms=round(sum(stalls), 1),
    )


async def latency(run: Run, kind: str, rate: float, tag: str = "") -> dict[str, Any]:
    """Produce-to-prediction latency at ``rate`` events per second, after a warm-up; with the
    machine's stalls meanwhile (:func:`stall_probe`)."""
    args = run.args
    ns = f"bench-lat{tag}-{kind}-{run.run_id}"
    src, out = f"{ns}.in", f"{ns}.out"
    await create_topics(run.bootstrap, [src, out, f"{ns}.dlq"], args.partitions)
    producer = await new_producer(run.bootstrap)
    worker = run.start(kind, ns, src, out)
    start_ns = 0
    reader = Reader(run.bootstrap, out, latency_from_ns=2**62)
    await reader.start()
    rng = random.Random(1)
    try:
        warm = [event(rng.randrange(args.entities), rng.gauss(100, 10)) for _ in range(200)]
        await asyncio.gather(*await send_keyed(producer, src, warm))
        await wait_for(lambda: reader.count >= len(warm), 120, worker, "warm-up outputs")
        start_ns = time.time_ns()
        reader.latency_from_ns = start_ns
        with stall_probe() as stalls:
            sent, achieved = await offer(
                producer, src, rate, args.entities, rng, lambda elapsed: elapsed >= args.latency_s
            )
        await wait_for(
            lambda: len(reader.latencies_ms) >= sent, args.drain_s, worker, "all latency outputs"
        )
    finally:
        worker.stop()
        await reader.stop()
        await producer.stop()
    lat = np.asarray(reader.latencies_ms)
    got = len(lat)
    return {
        "offered_per_second": round(rate, 1),
        "produced_per_second": round(achieved, 1),
        "events": sent,
        "delivered": got,
        "kept_up": got >= sent,
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 1) if got else None,
            "p99": round(float(np.percentile(lat, 99)), 1) if got else None,
            "max": round(float(lat.max()), 1) if got else None,
        },
        "machine_stalls": stalls,
    }


async def memory_check(url: str, entities: int, horizon: int = 1) -> dict[str, Any]:
    """Redis memory per entity over many float16 states, as the worker leaves them at rest
    (one kept prediction, the default TTL)."""
    await flush_redis(url)
    mem0, _ = await redis_memory(url)
    settings = Settings()
    store = RedisStateStore.from_url(url, "bench-memory", settings.state_ttl_s)
    rng = np.random.default_rng(0)
    chunk, sizes = 5000, []
    try:
        for start in range(0, entities, chunk):
            u = min(chunk, entities - start)
            b = StateBatch.empty(u, 2, 64, horizon)
            b.h[...] = rng.standard_normal(b.h.shape)
            b.c[...] = rng.standard_normal(b.c.shape)
            b.step[:] = 10
            b.partition[:], b.offset[:] = 0, np.arange(start, start + u)
            b.version[:] = b"0123456789ab"
            b.set_outputs(
                np.arange(u), np.arange(start, start + u), np.full(u, 10), np.ones((u, horizon))
            )
            blobs = encode_many(b, "float16")
            sizes.append(len(blobs[0]))
            await store.put_many([(f"e{start + j:07d}", blob) for j, blob in enumerate(blobs)])
    finally:
        await store.aclose()
    mem1, keys = await redis_memory(url)
    per = (mem1 - mem0) / keys
    payload = float(np.mean(sizes))
    await flush_redis(url)
    return {
        "entities": keys,
        "dtype": "float16",
        "value_bytes": payload,
        "bytes_per_entity": round(per, 1),
        "ratio_to_value": round(per / payload, 3),
        "ttl": True,
    }


# -------------------------------------------------------------------------------- reporting --


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.is_available(),
    }


def table(doc: dict[str, Any]) -> str:
    rows = [
        "kind         events/s   worker µs/ev  kafka µs/ev  redis µs/ev  p50 ms  p99 ms"
        "  low p50  low p99"
    ]
    for kind in KINDS:
        t = doc["throughput"].get(kind)
        if t is None:
            continue
        cpu = t["cpu_us_per_event"]
        common = doc["latency"].get(kind, {})
        own = doc.get("latency_half_own_max", {}).get(kind)
        lat, mark = (own["latency_ms"], "*") if own else (common.get("latency_ms", {}), "")
        low = doc.get("latency_low_rate", {}).get(kind, {}).get("latency_ms", {})
        rows.append(
            f"{kind:<12} {t['events_per_second']:>9,.0f} {cpu.get('worker', 0):>13} "
            f"{cpu.get('kafka', 0):>12} {cpu.get('redis', 0):>12} "
            f"{lat.get('p50') or '-':>7} {str(lat.get('p99') or '-') + mark:>7} "
            f"{low.get('p50') or '-':>8} {low.get('p99') or '-':>8}"
        )
    if doc.get("latency_half_own_max"):
        rows.append("p50/p99 at half streamer's maximum; *: at half the kind's own maximum")
    return "\n".join(rows)


def new_run(args: argparse.Namespace, tmp: Path) -> Run:
    """A run in scratch directory ``tmp``, with the benchmark's model (H=64, 2 layers) saved, and
    streamer-next's (:func:`next_model`) when it runs."""
    torch.manual_seed(0)
    model_dir = tmp / "model"
    save_artifact(SequenceModel(ModelSpec(hidden_size=64, num_layers=2, horizon=1)), model_dir)
    run = Run(args, tmp, model_dir)
    if "streamer-next" in getattr(args, "kinds", ()):
        run.next_model_dir = tmp / "next-model"
        save_artifact(next_model(args.next_values), run.next_model_dir)
    return run


def next_model(
    values: int,
    hidden: int = 64,
    layers: int = 2,
    embedding: int = 32,
    groups: int | None = None,
    exact: bool = False,
) -> SequenceModel:
    """A next-event model (by default of the benchmark's core, H=64, 2 layers) over ``values``
    values of ``item`` (``v0``...), top 10, embeddings of 32 (train's default) and the head
    ``streamer train --next`` gives that many values (``groups`` None: a two-level softmax from
    4,096 on; ``exact``: ``--groups-exact``). Untrained weights cost what trained ones do."""
    torch.manual_seed(0)
    spec = ModelSpec(
        hidden_size=hidden,
        num_layers=layers,
        task="next",
        scaling="none",
        categorical=("item",),
        vocabularies=(tuple(f"v{i}" for i in range(values)),),
        embedding=embedding,
        next="item",
        top_k=10,
        groups=groups_for(values + 1) if groups is None else groups,
        groups_exact=exact,
    )
    return SequenceModel(spec).eval()


async def backlog(run: Run, values: int = 0) -> str:
    """A new topic holding ``--events`` events of ``--entities`` entities; its name. With
    ``values``: next-event events, each with a value of ``item`` drawn uniformly (a few beyond
    the vocabulary: out of it), instead of a y."""
    args = run.args
    src = f"bench-{'next-' if values else ''}events-{run.run_id}"
    await create_topics(run.bootstrap, [src], args.partitions)
    order = np.random.default_rng(0).permutation(np.resize(np.arange(args.entities), args.events))
    ys = np.random.default_rng(1).normal(100, 10, args.events)
    producer = await new_producer(run.bootstrap)
    t = time.monotonic()
    if values:
        items = np.random.default_rng(2).integers(0, values + values // 100, args.events)
        events = [next_event(int(e), int(v)) for e, v in zip(order, items, strict=True)]
    else:
        events = [event(int(e), float(y)) for e, y in zip(order, ys, strict=True)]
    await asyncio.gather(*await send_keyed(producer, src, events))
    await producer.stop()
    print(
        f"produced {args.events:,} events of {args.entities:,} entities "
        f"in {time.monotonic() - t:.1f} s",
        file=sys.stderr,
    )
    return src


def config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's parameters, as the JSON document reports them."""
    return {
        "events": args.events,
        "entities": args.entities,
        "partitions": args.partitions,
        "model": {"cell": "lstm", "hidden_size": 64, "layers": 2, "horizon": 1},
        "state_dtype": "float32",
        "batch_max_size": args.batch,
        "batch_max_wait_s": args.batch_wait_s,
        "batch_max_behind": args.behind,
        "cache_max_mb": args.cache_mb,
        "torch_threads": args.torch_threads,
        "budget_s": args.budget_s,
        **(
            {"next_values": args.next_values}
            if "streamer-next" in getattr(args, "kinds", ())
            else {}
        ),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="streamer-bench-") as tmp_name:
        run = new_run(args, Path(tmp_name))
        kinds = [k for k in KINDS if k in args.kinds]
        src = await backlog(run)
        sources = (
            {"streamer-next": await backlog(run, args.next_values)} if run.next_model_dir else {}
        )
        doc: dict[str, Any] = {
            "benchmark": "throughput",
            "config": config(args),
            "throughput": {},
            "latency": {},
        }
        for kind in kinds:
            print(f"throughput: {kind}", file=sys.stderr)
            doc["throughput"][kind] = await throughput(run, kind, sources.get(kind, src))
            print(f"  {doc['throughput'][kind]}", file=sys.stderr)
        if args.rounds > 1 and {"raw-pass", "streamer"} <= set(kinds):
            doc["paired_rounds"] = await paired_rounds(run, src, doc["throughput"])
        eps = {k: v["events_per_second"] for k, v in doc["throughput"].items()}
        rate = args.rate or eps.get("streamer", max(eps.values())) / 2
        kinds = [k for k in kinds if k not in sources]  # (latency: of the forecasters' events)
        for kind in kinds:
            print(f"latency at {rate:,.0f}/s: {kind}", file=sys.stderr)
            doc["latency"][kind] = await latency(run, kind, rate)
            print(f"  {doc['latency'][kind]}", file=sys.stderr)
        behind = [k for k in kinds if not doc["latency"][k]["kept_up"]]
        if behind and not args.rate:  # each at half its own maximum, as streamer above
            doc["latency_half_own_max"] = {}
            for kind in behind:
                own = eps[kind] / 2
                print(f"latency at {own:,.0f}/s (half its maximum): {kind}", file=sys.stderr)
                got = await latency(run, kind, own, tag="-half")
                doc["latency_half_own_max"][kind] = got
                print(f"  {got}", file=sys.stderr)
        if args.low_rate:
            doc["latency_low_rate"] = {}
            for kind in [k for k in kinds if eps[k] >= 2 * args.low_rate]:
                print(f"latency at {args.low_rate:,.0f}/s: {kind}", file=sys.stderr)
                got = await latency(run, kind, args.low_rate, tag="-low")
                doc["latency_low_rate"][kind] = got
                print(f"  {got}", file=sys.stderr)
        if args.memory_entities:
            print(f"redis memory: {args.memory_entities:,} float16 states", file=sys.stderr)
            doc["redis_memory"] = await memory_check(args.redis_url, args.memory_entities)
        doc["targets"] = targets(doc)
        doc["machine"] = machine()
        return doc


async def paired_rounds(run: Run, src: str, first: dict[str, Any]) -> dict[str, Any]:
    """The pass-through and streamer again, one after the other, ``--rounds`` pairs in all (the
    first pair is the main measurement): this machine's speed drifts by tens of percent within a
    run, so the ratio is taken within each pair and its median is the figure."""
    pairs = [(first["raw-pass"]["events_per_second"], first["streamer"]["events_per_second"])]
    for i in range(1, run.args.rounds):
        eps = []
        for kind in ("raw-pass", "streamer"):
            print(f"throughput, pair {i + 1}: {kind}", file=sys.stderr)
            got = await throughput(run, kind, src, tag=f"-pair{i + 1}")
            print(f"  {got['events_per_second']:,.0f} events/s", file=sys.stderr)
            eps.append(got["events_per_second"])
        pairs.append((eps[0], eps[1]))
    ratios = [round(s / r, 3) for r, s in pairs]
    return {
        "raw_pass_events_per_second": [r for r, _ in pairs],
        "streamer_events_per_second": [s for _, s in pairs],
        "streamer_over_raw_pass": ratios,
        "median_ratio": round(statistics.median(ratios), 3),
    }


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    eps = {k: v["events_per_second"] for k, v in doc["throughput"].items()}
    out: dict[str, Any] = {}
    s = eps.get("streamer")
    if s and "naive" in eps:
        out["streamer_over_naive"] = {"value": round(s / eps["naive"], 1), "target": ">= 10"}
    if s and "faust-pass" in eps:
        out["streamer_over_faust_pass"] = {
            "value": round(s / eps["faust-pass"], 2),
            "target": "> 1",
        }
    if s and "streamer-cluster" in eps:
        out["redis_cluster_over_single_redis"] = {
            "value": round(eps["streamer-cluster"] / s, 2),
            "target": "none (3 masters on this machine's 2 cores)",
        }
    if s and "raw-pass" in eps:
        out["streamer_over_raw_pass"] = {"value": round(s / eps["raw-pass"], 2), "target": ">= 0.5"}
        if "paired_rounds" in doc:
            out["streamer_over_raw_pass"] = {
                "value": doc["paired_rounds"]["median_ratio"],
                "each_pair": doc["paired_rounds"]["streamer_over_raw_pass"],
                "target": ">= 0.5 (median over pairs)",
            }
    cpu = doc["throughput"].get("streamer", {}).get("cpu_us_per_event", {}).get("worker")
    if cpu is not None:
        out["streamer_worker_cpu_us_per_event"] = {"value": cpu, "target": "<= 12"}
    per = doc["throughput"].get("streamer-next", {}).get("cpu_us_per_event", {}).get("worker")
    if cpu and per is not None:
        out["next_event_worker_cpu_over_streamer"] = {
            "value": round(per / cpu, 2),
            "values": doc["config"].get("next_values"),
            "target": "<= 2",
        }
    passes = {k: v for k, v in eps.items() if k in PASS_KINDS}
    if s and passes:
        fastest = max(passes, key=lambda k: passes[k])
        out["streamer_over_fastest_pass"] = {
            "value": round(s / passes[fastest], 3),
            "fastest": fastest,
            "target": ">= 0.3",
        }
    p99 = doc["latency"].get("streamer", {}).get("latency_ms", {}).get("p99")
    if p99 is not None:
        out["streamer_p99_ms"] = {"value": p99, "target": "<= 50 (at half the maximum rate)"}
    low = doc.get("latency_low_rate", {}).get("streamer", {})
    if low.get("latency_ms", {}).get("p99") is not None:
        out["streamer_p99_ms_low_rate"] = {
            "value": low["latency_ms"]["p99"],
            "rate": low["offered_per_second"],
            "target": "<= 20",
        }
    if "redis_memory" in doc:
        out["redis_memory_ratio"] = {
            "value": doc["redis_memory"]["ratio_to_value"],
            "target": "<= 1.3",
        }
    return out


def common_options(ap: argparse.ArgumentParser, budget_s: float = 40.0) -> None:
    """The options of every benchmark on this module's runs: services, backlog, worker tuning."""
    ap.add_argument("--bootstrap", help="use this Kafka instead of starting one")
    ap.add_argument("--redis-url", help="use this Redis (it is flushed!) instead of starting one")
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1024, help="streamer's batch.max_size")
    ap.add_argument(
        "--batch-wait-s",
        type=float,
        default=Settings().batch.max_wait_s,
        help="streamer's batch.max_wait_s",
    )
    ap.add_argument(
        "--behind",
        type=int,
        default=Settings().batch.max_behind,
        help="streamer's batch.max_behind",
    )
    ap.add_argument(
        "--cache-mb", type=float, default=Settings().cache_max_mb, help="streamer's cache_max_mb"
    )
    ap.add_argument("--torch-threads", type=int, default=1, help="streamer's torch_threads")
    ap.add_argument(
        "--budget-s", type=float, default=budget_s, help="most seconds per throughput run"
    )
    ap.add_argument("--keep-services", action="store_true", help="leave Kafka and Redis running")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_options(ap)
    ap.add_argument("--latency-s", type=float, default=10.0, help="seconds of offered load")
    ap.add_argument("--drain-s", type=float, default=15.0, help="wait for late outputs")
    ap.add_argument("--rate", type=float, help="offered rate (default: half of streamer's max)")
    ap.add_argument(
        "--low-rate",
        type=float,
        default=100.0,
        help="a second, low offered rate for the kinds that kept up (0: none)",
    )
    ap.add_argument("--memory-entities", type=int, default=1_000_000)
    ap.add_argument(
        "--next-values", type=int, default=10_000, help="streamer-next's vocabulary size"
    )
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"subset of {','.join(KINDS)}")
    ap.add_argument("--profile", action="store_true", help="sample streamer's worker with py-spy")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="pairs of raw-pass and streamer runs for their ratio (median over the pairs)",
    )
    args = ap.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        ap.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    return args


def services(action: str, what: str = "all") -> None:
    subprocess.run(
        ["bash", str(SERVICES), action, what],
        env={**os.environ, **SERVICE_ENV},
        check=True,
        stdout=sys.stderr,
    )


@contextlib.contextmanager
def bench_services(args: argparse.Namespace) -> Iterator[None]:
    """The benchmark's own Kafka and Redis (ports 29092, 26379) unless ``--bootstrap`` and
    ``--redis-url`` name others, whose addresses it sets in ``args``; stopped at the end unless
    ``--keep-services``."""
    own = not (args.bootstrap and args.redis_url)
    if own:
        services("up")
        args.bootstrap = f"127.0.0.1:{SERVICE_ENV['KAFKA_PORT']}"
        args.redis_url = f"redis://127.0.0.1:{SERVICE_ENV['REDIS_PORT']}/0"
    if "streamer-cluster" in getattr(args, "kinds", ()):
        services("up", "redis-cluster")  # always the benchmark's own, on 27000-27002
    try:
        yield
    finally:
        if own and not args.keep_services:
            services("down")


def save(doc: dict[str, Any], stem: str) -> str:
    """The document as JSON, also written to ``build/bench/{stem}-{time}.json``."""
    out_dir = ROOT / "build" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2)
    (out_dir / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text + "\n")
    return text


if __name__ == "__main__":
    # Fresh topics have no leader for a moment: the clients retry and say so, noisily.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    args = parse()
    with bench_services(args):
        doc = asyncio.run(main(args))
    text = save(doc, "throughput")
    print(table(doc), file=sys.stderr)
    print(text)
