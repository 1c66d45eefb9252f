"""``streamer doctor`` against the real services: a healthy setup passes, and each thing that stops
a worker (Redis unreachable, a service that never answers, no events topic, no model) fails its
own check with a clear line, in seconds."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from streamer.kafka import ensure_topics
from streamer.model.artifact import load_artifact
from streamer.model.registry import Registry
from streamer.ops.doctor import Check, diagnose
from streamer.ops.presence import WorkerInfo, announce, withdraw
from streamer.settings import Settings, to_env
from streamer.state import redis_client, state_key
from streamer.state.codec import StateRecord, encode
from tests.integration.workers import produce
from tests.unit.test_cli import run

pytestmark = pytest.mark.integration


def settings_for(services: dict[str, str], ns: str, **over: object) -> Settings:
    return Settings.model_validate(
        {
            "app_id": ns,
            "model_name": ns,
            "kafka": {"bootstrap_servers": services["bootstrap"]},
            "redis": {
                "url": services["redis_url"],
                "cluster": services.get("redis_cluster") == "1",
            },
            "topics": {
                "events": f"{ns}.events",
                "predictions": f"{ns}.predictions",
                "windows": f"{ns}.windows",
                "dead_letter": f"{ns}.dlq",
                "partitions": 2,
            },
            **over,
        }
    )


def doctor(settings: Settings, *args: str) -> tuple[int, dict[str, tuple[str, str]], str, float]:
    """Run ``streamer doctor`` in a process; its exit status, its lines by check name (symbol,
    detail), its whole output and its wall time."""
    started = time.monotonic()
    r = run("doctor", *args, env=to_env(settings), timeout=60)
    took = time.monotonic() - started
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    checks = {}
    for line in lines[:-1]:
        symbol, name_detail = line[0], line[2:]
        name, detail = name_detail[:18].strip(), name_detail[18:].strip()
        checks[name] = (symbol, detail)
    assert lines[-1].startswith(f"{len(checks)} checks: "), r.stdout
    return r.returncode, checks, r.stdout, took


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung service, not a closed one."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # the kernel completes the handshakes; nobody ever reads
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_a_healthy_setup_passes(redis_kind: dict[str, str], ns: str, model_dir: Path) -> None:
    services = redis_kind
    settings = settings_for(services, ns, model_path=model_dir)
    await ensure_topics(settings)
    version = load_artifact(model_dir).version

    code, checks, out, took = doctor(settings)
    assert code == 0, out
    assert {symbol for symbol, _ in checks.values()} <= {"✓", "!"}, out
    for name in ("settings", "redis", "kafka", "topic events", "topic predictions", "model"):
        assert checks[name][0] == "✓", out
    assert checks["topic events"][1] == f"'{ns}.events': 2 partitions, replication 1"
    assert checks["topic windows"][1] == f"'{ns}.windows': 2 partitions, replication 1"
    assert checks["model"][1].startswith(f"{version} from {model_dir}: lstm forecast, 2x16")
    assert checks["states"] == ("✓", "no stored states of this model name yet")
    if services.get("redis_cluster") == "1":
        assert "3 primaries, 0 replicas, 16384/16384 slots ok" in checks["redis"][1], out
        assert checks["redis eviction"][1].endswith("(3 of 3)"), out
    assert checks["workers"][0] == "!" and "no live worker" in checks["workers"][1]
    assert checks["consumer lag"][1].endswith(f"no lag on '{ns}.events'")
    assert took < 20, took

    r = run("doctor", "--json", env=to_env(settings), timeout=60)
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["status"] in ("ok", "warn")
    assert [c["name"] for c in doc["checks"]] == list(checks)


async def test_states_workers_lag_and_the_registry_as_a_worker_would_see_them(
    redis_kind: dict[str, str], ns: str, model_dir: Path
) -> None:
    """In process: stored states of the model's shape and of another, an announced worker, events
    nobody consumed, and the registry's active version taking precedence over the path; in a
    Redis and in a Redis Cluster."""
    services = redis_kind
    settings = settings_for(services, ns, model_path=model_dir)
    await ensure_topics(settings)
    art = load_artifact(model_dir)
    client = redis_client(settings)
    zeros = np.zeros((2, 16), np.float32)
    state = StateRecord(zeros, zeros, art.version, 3, 0, 2, 0, 3.0, 1.0, 1.0)
    other = StateRecord(
        np.zeros((3, 8), np.float32), np.zeros((3, 8), np.float32), "old", *(1,) * 7
    )
    await client.set(state_key(ns, "fits"), encode(state))
    await client.set(state_key(ns, "other"), encode(other))
    await client.set(state_key(ns, "junk"), b"not a state")
    await produce(services["bootstrap"], f"{ns}.events", [(b"e1", b"{}")] * 5)
    try:
        got = by_name(await diagnose(settings))
        assert got["states"].status == "warn", got["states"]
        assert "3 sampled" in got["states"].detail
        assert "1 cannot be decoded" in got["states"].detail
        assert "1 have another shape (2 tensors of 3x8; the model's: 2 of 2x16)" in (
            got["states"].detail
        )
        assert got["consumer lag"] == Check(
            "consumer lag",
            "warn",
            f"group '{ns}' (Dead, 0 members): nothing committed yet, 5 events waiting on "
            f"'{ns}.events'; no worker is consuming them",
        )

        info = WorkerInfo("w1", "host", 1, None, ns, art.version, partitions=[0, 1])
        info.dead_letters = {"partition_conflict": 2}
        await announce(client, ns, info)
        got = by_name(await diagnose(settings))
        assert got["workers"] == Check(
            "workers", "ok", f"1 live: w1 ({art.version}, partitions 0-1)"
        )
        assert got["producers"].status == "warn"
        assert got["producers"].detail.startswith("2 events came on another partition")
        assert got["consumer lag"].status == "ok"

        registry = Registry(redis_client(settings), ns)
        try:
            await registry.publish(model_dir)
            await registry.activate(art.version)
        finally:
            await registry.aclose()
        got = by_name(await diagnose(settings.model_copy(update={"model_path": None})))
        assert got["model"].status == "ok"
        assert got["model"].detail.startswith(f"{art.version} from the registry ({ns} active)")
    finally:
        await withdraw(client, ns, "w1")
        keys = [k async for k in client.scan_iter(match=f"streamer*{ns}*")]
        await client.delete(*keys)
        await client.aclose()


def test_unreachable_redis_fails_its_check_at_once(
    services: dict[str, str], ns: str, model_dir: Path
) -> None:
    settings = settings_for(services, ns, model_path=model_dir)
    code, checks, out, took = doctor(settings, "--redis-url", "redis://127.0.0.1:1/0")
    assert code == 1, out
    assert checks["redis"] == (
        "✗",
        "cannot reach Redis at redis://127.0.0.1:1/0: ConnectionError: Error 111 connecting to "
        "127.0.0.1:1. Connect call failed ('127.0.0.1', 1).",
    )
    for name in ("redis eviction", "redis persistence", "states", "workers"):
        assert checks[name] == ("!", "not checked: Redis is unreachable"), out
    assert checks["kafka"][0] == "✓", out
    assert took < 10, took


def test_services_that_never_answer_fail_within_the_timeout(
    services: dict[str, str], ns: str, model_dir: Path, silent_port: int
) -> None:
    settings = settings_for(services, ns, model_path=model_dir)
    code, checks, out, took = doctor(
        settings,
        "--redis-url",
        f"redis://127.0.0.1:{silent_port}/0",
        "--bootstrap-servers",
        f"127.0.0.1:{silent_port}",
        "--timeout",
        "1",
    )
    assert code == 1, out
    assert checks["redis"][0] == "✗" and "127.0.0.1" in checks["redis"][1], out
    assert checks["kafka"] == (
        "✗",
        f"no answer from Kafka at 127.0.0.1:{silent_port} in 1.0s",
    ), out
    assert checks["model"][0] == "!" and "the registry could not be read" in checks["model"][1]
    assert took < 12, took


def test_a_missing_events_topic_fails(services: dict[str, str], ns: str, model_dir: Path) -> None:
    settings = settings_for(services, ns, model_path=model_dir)
    code, checks, out, _ = doctor(settings)
    assert code == 1, out
    assert checks["topic events"] == (
        "✗",
        f"'{ns}.events' does not exist (a typo in STREAMER_TOPICS__EVENTS?)",
    )
    assert (
        checks["topic predictions"][0] == "!"
        and "the worker creates it" in (checks["topic predictions"][1])
    )
    assert checks["consumer lag"] == ("!", f"not checked: no topic '{ns}.events'")
    assert [name for name, (symbol, _) in checks.items() if symbol == "✗"] == ["topic events"]


async def test_a_model_path_that_does_not_exist_fails(
    services: dict[str, str], ns: str, tmp_path: Path
) -> None:
    settings = settings_for(services, ns, model_path=tmp_path / "nowhere")
    await ensure_topics(settings)
    code, checks, out, _ = doctor(settings)
    assert code == 1, out
    assert checks["model"] == (
        "✗",
        f"{tmp_path / 'nowhere'} is not a model artifact (needs spec.json and model.safetensors)",
    )
    assert [name for name, (symbol, _) in checks.items() if symbol == "✗"] == ["model"]
