"""Credentials: a Redis that requires a password (and an ACL user); secrets never printed."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from streamer.errors import StateError
from streamer.kafka import ensure_topics
from streamer.model.artifact import load_artifact
from streamer.settings import Settings
from streamer.state import RedisStateStore
from streamer.train.data import event_rows
from tests.conftest import make_panel
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
