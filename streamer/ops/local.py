"""Running a worker next to a command (the demo, ``streamer evaluate``): its own namespace of topics,
consumer group and state keys, and a worker process started and stopped with the command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from streamer.errors import StreamerError
from streamer.kafka import ensure_topics, read_topic, replay_events
from streamer.ops.presence import presence_key
from streamer.schemas import Prediction
from streamer.settings import Settings, to_env
from streamer.state import redis_client
from streamer.state.store import outbox_key, state_key

__all__ = ["namespaced", "remove_run", "stream_through", "worker_process"]


def namespaced(base: Settings, run: str, model: Path) -> Settings:
    """``base`` with topics, group and state keys of their own (``{run}.events``, ...), serving the
    artifact ``model`` and not the registry's active version."""
    d = base.model_dump()
    d.update(app_id=f"streamer-{run}", model_name=run, model_path=model, registry_poll_s=0)
    d["metrics"] = {**d["metrics"], "port": 0}  # any free port: it is announced in Redis
    d["topics"] = {
        **d["topics"],
        "events": f"{run}.events",
        "predictions": f"{run}.predictions",
        "windows": f"{run}.windows",
        "dead_letter": f"{run}.dlq",
    }
    return Settings.model_validate(d)


@contextlib.contextmanager
def worker_process(settings: Settings, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A ``streamer worker`` process for ``settings``, logging to ``log_path``; stopped (SIGTERM,
    then SIGKILL after a minute) on exit."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")},
        **to_env(settings),
    }
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streamer.ops.cli", "worker", "-l", "info"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield worker
        finally:
            worker.terminate()
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()


async def stream_through(
    settings: Settings,
    rows: Iterable[dict[str, object]],
    topic: str,
    expected: int,
    worker: subprocess.Popen[bytes],
    on_prediction: Callable[[Prediction], None],
    *,
    rate: float | None = None,
    on_sent: Callable[[int], None] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> float:
    """Replay ``rows`` as events to the running ``worker`` and hand each of the first ``expected``
    predictions on ``topic`` to ``on_prediction``; ``on_tick`` runs four times a second. Returns
    the seconds it took; raises if the worker exits or the replay fails first."""
    await ensure_topics(settings)
    start = time.monotonic()
    replay = asyncio.create_task(replay_events(settings, rows, rate=rate, on_sent=on_sent))
    received = 0

    async def consume() -> None:
        nonlocal received
        async for _k, value, _p, _o, _h in read_topic(settings, topic, from_beginning=True):
            if value is not None:
                on_prediction(Prediction.from_json(value))
                received += 1
            if received >= expected:
                return

    consumer = asyncio.create_task(consume())
    finished = False
    try:
        while not consumer.done():
            await asyncio.wait({consumer}, timeout=0.25)
            if on_tick is not None:
                on_tick()
            if worker.poll() is not None:
                raise StreamerError(
                    f"the worker exited with status {worker.returncode}; see its log"
                )
            if replay.done() and replay.exception() is not None:
                raise replay.exception()  # type: ignore[misc]
        consumer.result()
        finished = True
    finally:
        for task in (consumer, replay):
            if not task.done() and not (finished and task is replay):
                task.cancel()
    await replay  # (paced: it may still wait out its last interval)
    return time.monotonic() - start


async def remove_run(settings: Settings) -> tuple[int, int]:
    """Delete what a namespaced run (:func:`namespaced`) left behind: its topics, and its states,
    outboxes and worker presence in Redis. Returns (topics, keys) deleted. Its consumer group's
    offsets stay until the broker expires them (``offsets.retention.minutes``)."""
    t = settings.topics
    names = [t.events, t.predictions, t.windows, t.dead_letter]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, **settings.kafka.client_options()
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        gone = [n for n in names if n in existing]
        if gone:
            await admin.delete_topics(gone)
    finally:
        await admin.close()
    redis = redis_client(settings)
    keys = 0
    try:
        model = settings.model_name
        for pattern in (state_key(model, "*"), outbox_key(model, "*")):  # type: ignore[arg-type]
            batch = [k async for k in redis.scan_iter(match=pattern, count=1000)]
            for i in range(0, len(batch), 500):
                keys += sum([await redis.unlink(k) for k in batch[i : i + 500]])
        keys += await redis.unlink(presence_key(settings.app_id))
    finally:
        await redis.aclose()
    return len(gone), keys
