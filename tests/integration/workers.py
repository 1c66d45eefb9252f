"""Running real worker processes and talking to the real broker in tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streamer.schemas import Prediction
from streamer.state import RedisStateStore


def worker_env(services: dict[str, str], ns: str, model: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env.update(
        STREAMER_APP_ID=ns,
        STREAMER_MODEL_NAME=ns,
        STREAMER_MODEL_PATH=str(model),
        STREAMER_TOPICS__EVENTS=f"{ns}.events",
        STREAMER_TOPICS__PREDICTIONS=f"{ns}.predictions",
        STREAMER_TOPICS__WINDOWS=f"{ns}.windows",
        STREAMER_TOPICS__DEAD_LETTER=f"{ns}.dlq",
        STREAMER_KAFKA__BOOTSTRAP_SERVERS=services["bootstrap"],
        STREAMER_KAFKA__SESSION_TIMEOUT_S="6",
        STREAMER_REDIS__URL=services["redis_url"],
        STREAMER_REDIS__CLUSTER=services.get("redis_cluster", "0"),
        STREAMER_BATCH__MAX_SIZE="64",
        STREAMER_BATCH__MAX_WAIT_S="0.02",
        STREAMER_METRICS__PORT="0",  # a free port each: workers run side by side
    )
    # the worker's Kafka client: TEST_KAFKA_CLIENT=confluent runs every test on the other one
    if os.environ.get("TEST_KAFKA_CLIENT"):
        env["STREAMER_KAFKA__CLIENT"] = os.environ["TEST_KAFKA_CLIENT"]
    env.update(extra)
    return env


def store_for(services: dict[str, str], ns: str, **kwargs: Any) -> RedisStateStore:
    """The state store of model ``ns`` in the services' Redis or Redis Cluster."""
    cluster = services.get("redis_cluster") == "1"
    return RedisStateStore.from_url(services["redis_url"], ns, cluster=cluster, **kwargs)


#: Faust's own command line running the Faust engine's ready app
FAUST_CLI = [sys.executable, "-m", "faust", "-A", "workers.faust_app", "worker", "-l", "info"]


class WorkerProcess:
    """``streamer worker`` (or ``command``) in a child process, its output kept in a log file."""

    def __init__(self, env: dict[str, str], log: Path, command: list[str] | None = None):
        self.log = log
        self._fh = log.open("ab")
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "streamer.ops.cli", "worker", "-l", "info"],
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._fh.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the worker and wait for it; one that does not stop in time is killed (so no
        test leaves a worker behind) and the timeout raised."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            raise
        finally:
            if not self._fh.closed:
                self._fh.close()

    async def logged(self, text: str, timeout: float = 120) -> None:
        """Wait until the worker's log has ``text``; fail if it exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker never logged {text!r}:\n{self.tail()}")
            await asyncio.sleep(0.2)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


async def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None]],
    rate: float | None = None,
) -> int:
    """Send the messages, as fast as possible or ``rate`` a second (in steps of 20)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    n = 0
    try:
        futs = []
        for i, (key, value) in enumerate(messages):
            futs.append(await producer.send(topic, value, key=key))
            if rate and i % 20 == 19:
                await asyncio.sleep(20 / rate)
        await asyncio.gather(*futs)
        n = len(futs)
    finally:
        await producer.stop()
    return n


class TopicReader:
    """Reads a whole topic from the beginning, without a consumer group."""

    def __init__(self, bootstrap: str, topic: str, isolation_level: str = "read_uncommitted"):
        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=1000,
            isolation_level=isolation_level,
        )
        self.records: list = []  # type: ignore[type-arg]

    async def __aenter__(self) -> TopicReader:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def read_until(
        self, count: int, timeout: float, proc: WorkerProcess | None = None
    ) -> list:  # type: ignore[type-arg]
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline:
            if proc is not None and proc.proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.proc.returncode}:\n{proc.tail()}")
            got = await self.consumer.getmany(timeout_ms=200)
            for recs in got.values():
                self.records.extend(recs)
        return self.records

    async def drain(self, quiet_s: float = 3.0) -> list:  # type: ignore[type-arg]
        """Keep reading until nothing new arrives for ``quiet_s`` seconds."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            got = await self.consumer.getmany(timeout_ms=200)
            for recs in got.values():
                if recs:
                    last = time.monotonic()
                self.records.extend(recs)
        return self.records


def predictions_of(records: list) -> list[Prediction]:  # type: ignore[type-arg]
    return [Prediction.from_json(r.value) for r in records]


def event_message(ev: dict[str, object]) -> tuple[bytes, bytes]:
    return str(ev["unique_id"]).encode(), orjson.dumps(ev)
