"""Credentials and encryption: a Redis that requires a password (and an ACL user), Kafka's
SASL/PLAIN listener, and TLS to both (Kafka's SSL listener, Redis's TLS port) with the certificate
verified; secrets never printed, a wrong CA one clear line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from streamer.errors import StateError
from streamer.kafka import ensure_topics
from streamer.model.artifact import load_artifact
from streamer.settings import Settings
from streamer.state import RedisStateStore
from streamer.train.data import event_rows
from tests.conftest import TLS_CA, TLS_OTHER_CA, make_panel
from tests.integration.test_worker import check_states, settings_for
from tests.integration.workers import TopicReader, WorkerProcess, event_message, produce, worker_env
from tests.reference import expected_by_entity
from tests.unit.test_cli import run

pytestmark = pytest.mark.integration


def secure_settings(secure: dict[str, str], ns: str, **redis: object) -> Settings:
    return Settings.model_validate({"model_name": ns, "redis": {"url": secure["url"], **redis}})


async def test_store_needs_the_password_and_never_shows_it(
    secure_redis: dict[str, str], ns: str
) -> None:
    pw = secure_redis["password"]
    good = secure_settings(secure_redis, ns, password=pw)
    assert pw not in repr(good) and pw not in str(good.model_dump())
    store = RedisStateStore.from_settings(good)
    assert await store.get_many(["a"]) == [None]
    await store.aclose()
    for bad in ({}, {"password": "wrong"}):
        store = RedisStateStore.from_settings(secure_settings(secure_redis, ns, **bad))
        with pytest.raises(StateError, match="refused the credentials") as info:
            await store.get_many(["a"])
        assert pw not in str(info.value)
        await store.aclose()


async def test_an_acl_user_limited_to_streamer_keys(secure_redis: dict[str, str], ns: str) -> None:
    admin = aioredis.Redis.from_url(secure_redis["url"], password=secure_redis["password"])
    await admin.execute_command(
        "ACL", "SETUSER", f"u{ns}", "on", ">user-pw", "~streamer:*", "+@all"
    )
    store = RedisStateStore.from_settings(
        secure_settings(secure_redis, ns, username=f"u{ns}", password="user-pw")
    )
    assert await store.put_many([("e", b"STRM" + b"\0" * 100)]) == [True]
    await store.aclose()
    await admin.aclose()


async def stream_through_worker(
    services: dict[str, str],
    ns: str,
    df,
    env: dict[str, str],
    log: Path,  # type: ignore[no-untyped-def]
) -> str:
    """Produce the panel, run one worker until every event has a prediction; return its log."""
    settings = settings_for(services, ns)
    await ensure_topics(settings)
    await produce(
        services["bootstrap"], settings.topics.events, [event_message(ev) for ev in event_rows(df)]
    )
    w = WorkerProcess({**env, "STREAMER_LOG_LEVEL": "debug"}, log)
    try:
        async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
            await out.read_until(len(df), timeout=120, proc=w)
    finally:
        assert w.stop() == 0, w.tail()
    assert len(out.records) == len(df)
    return log.read_text()


async def test_worker_and_cli_against_a_password_redis(
    services: dict[str, str], secure_redis: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    df = make_panel(20, 5, 10, seed=41)
    env = worker_env(
        {**services, "redis_url": secure_redis["url"]},
        ns,
        model_dir,
        STREAMER_REDIS__PASSWORD=secure_redis["password"],
    )
    log = await stream_through_worker(services, ns, df, env, tmp_path / "w.log")
    assert secure_redis["password"] not in log
    expected = expected_by_entity(load_artifact(model_dir).model, df)
    await check_states(
        {"redis_url": secure_redis["url"]}, ns, expected, password=secure_redis["password"]
    )

    cli = {"STREAMER_MODEL_NAME": ns, "STREAMER_REDIS__URL": secure_redis["url"]}
    r = run(
        "state", "get", "e0001", env={**cli, "STREAMER_REDIS__PASSWORD": secure_redis["password"]}
    )
    assert r.returncode == 0 and "e0001" in r.stdout, r.stderr
    r = run("state", "get", "e0001", env=cli)
    assert (
        r.returncode == 1
        and "refused the credentials" in r.stderr
        and len(r.stderr.splitlines()) == 1
    )


async def test_worker_through_a_sasl_listener(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    df = make_panel(20, 5, 10, seed=42)
    secret = "streamer-secret"  # deploy/local/services.sh's default SASL/PLAIN user
    env = worker_env(
        {**services, "bootstrap": services["sasl_bootstrap"]},
        ns,
        model_dir,
        STREAMER_KAFKA__SECURITY_PROTOCOL="SASL_PLAINTEXT",
        STREAMER_KAFKA__SASL_MECHANISM="PLAIN",
        STREAMER_KAFKA__SASL_USERNAME="streamer",
        STREAMER_KAFKA__SASL_PASSWORD=secret,
    )
    log = await stream_through_worker(services, ns, df, env, tmp_path / "w.log")
    assert secret not in log

    r = run(
        "replay",
        "x.csv",
        env={
            "STREAMER_KAFKA__BOOTSTRAP_SERVERS": services["sasl_bootstrap"],
            "STREAMER_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "STREAMER_KAFKA__SASL_USERNAME": "streamer",
            "STREAMER_KAFKA__SASL_PASSWORD": "wrong",
        },
    )
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1


def one_line(r: subprocess.CompletedProcess[str], needle: str) -> None:
    """A command that failed with exit status 1 and said why in one line."""
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert len(r.stderr.splitlines()) == 1 and needle in r.stderr, r.stderr[-2000:]


async def test_worker_and_cli_through_tls_to_kafka_and_redis(
    services: dict[str, str], tls_redis: str, ns: str, model_dir: Path, tmp_path: Path
) -> None:
    """A worker and the CLI reach Kafka's SSL listener and Redis's TLS port, verifying both
    certificates against the test CA; the predictions and states are the torch module's."""
    df = make_panel(20, 5, 10, seed=43)
    tls = {
        "STREAMER_KAFKA__BOOTSTRAP_SERVERS": services["ssl_bootstrap"],
        "STREAMER_KAFKA__SECURITY_PROTOCOL": "SSL",
        "STREAMER_KAFKA__SSL_CAFILE": str(TLS_CA),
        "STREAMER_REDIS__URL": tls_redis,
        "STREAMER_REDIS__SSL_CA_CERTS": str(TLS_CA),
    }
    env = worker_env(services, ns, model_dir, **tls)
    await stream_through_worker(services, ns, df, env, tmp_path / "w.log")
    expected = expected_by_entity(load_artifact(model_dir).model, df)
    await check_states({"redis_url": tls_redis}, ns, expected, ssl_ca_certs=str(TLS_CA))

    r = run("state", "get", "e0001", env={"STREAMER_MODEL_NAME": ns, **tls})
    assert r.returncode == 0 and "e0001" in r.stdout, r.stderr
    csv = tmp_path / "more.csv"
    make_panel(3, 4, 4, seed=44).to_csv(csv, index=False)
    topics = {k: v for k, v in env.items() if k.startswith("STREAMER_TOPICS__")}
    r = run("replay", str(csv), env={**topics, **tls})
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("command", ["state", "replay", "worker", "doctor"])
async def test_a_wrong_ca_is_one_line_not_a_hang(
    services: dict[str, str], tls_redis: str, ns: str, model_dir: Path, tmp_path: Path, command: str
) -> None:
    """A client given a CA that did not sign the server's certificate stops at once with one line
    naming the setting, for Kafka (the worker, replay) and Redis (the worker, the state CLI); it
    never waits as for an outage."""
    csv = tmp_path / "h.csv"
    make_panel(2, 3, 3, seed=45).to_csv(csv, index=False)
    good = {
        "STREAMER_KAFKA__BOOTSTRAP_SERVERS": services["ssl_bootstrap"],
        "STREAMER_KAFKA__SECURITY_PROTOCOL": "SSL",
        "STREAMER_KAFKA__SSL_CAFILE": str(TLS_CA),
        "STREAMER_REDIS__URL": tls_redis,
        "STREAMER_REDIS__SSL_CA_CERTS": str(TLS_CA),
    }
    kafka_wrong = {**good, "STREAMER_KAFKA__SSL_CAFILE": str(TLS_OTHER_CA)}
    redis_wrong = {**good, "STREAMER_REDIS__SSL_CA_CERTS": str(TLS_OTHER_CA)}
    base = worker_env(services, ns, model_dir)
    if command == "state":
        r = run("state", "get", "e0", env={**base, **redis_wrong}, timeout=60)
        one_line(r, "redis read failed: the server's TLS certificate did not verify")
        assert "STREAMER_REDIS__SSL_CA_CERTS" in r.stderr
    elif command == "replay":
        r = run("replay", str(csv), env={**base, **kafka_wrong}, timeout=60)
        one_line(r, f"Kafka's TLS certificate at {services['ssl_bootstrap']} did not verify")
        assert "STREAMER_KAFKA__SSL_CAFILE" in r.stderr
    elif command == "doctor":
        both_wrong = {**kafka_wrong, "STREAMER_REDIS__SSL_CA_CERTS": str(TLS_OTHER_CA)}
        r = run("doctor", env={**base, **both_wrong}, timeout=60)
        assert r.returncode != 0
        lines = [ln for ln in r.stdout.splitlines() if "did not verify" in ln]
        assert len(lines) == 2 and "✗ redis" in lines[0] and "✗ kafka" in lines[1], r.stdout
    else:
        r = run("worker", env={**base, **kafka_wrong}, timeout=60)
        one_line(r, "Kafka's TLS certificate")
        r = run("worker", env={**base, **redis_wrong}, timeout=60)
        one_line(r, "redis ping failed: the server's TLS certificate did not verify")
    # The right CA and a port without TLS: the handshake is cut off, one line too.
    plain = {**good, "STREAMER_KAFKA__BOOTSTRAP_SERVERS": services["bootstrap"]}
    if command == "replay":
        r = run("replay", str(csv), env={**base, **plain}, timeout=60)
        one_line(r, "(or the listener has no TLS)")
