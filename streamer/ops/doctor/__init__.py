"""``streamer doctor``: is this configuration ready to run, and are its services consistent?

Every check ends in one verdict: ``ok``, ``warn`` (it runs, but something will bite: states that
Redis may evict or lose, a topic the worker still has to create, no live worker) or ``fail`` (a
worker cannot run: Redis or Kafka unreachable, no events topic, no model). Each network call has a
short timeout, so an unreachable service fails its check in seconds instead of hanging the command;
checks that need a failed service say so instead of failing again.

Nothing is changed on the way, with one exception: :func:`streamer.ops.presence.live_workers` removes
the announcements of workers gone for long. Topics are looked up in the cluster's topic list first
and only those listed are described by name: asking a broker with ``auto.create.topics.enable``
about a missing topic creates it.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import asdict

import orjson

from streamer.ops.doctor.probes import (
    check_kafka,
    check_model,
    check_redis,
    check_states,
    check_workers,
    guard,
    quick_client,
)
from streamer.ops.doctor.verdicts import (
    Check,
    GroupOffsets,
    eviction_check,
    lag_check,
    overall,
    persistence_check,
    print_table,
    producers_check,
    redact,
    render,
    settings_check,
    states_check,
    topic_checks,
    workers_check,
)
from streamer.settings import Settings

__all__ = [
    "Check",
    "GroupOffsets",
    "diagnose",
    "eviction_check",
    "lag_check",
    "persistence_check",
    "producers_check",
    "redact",
    "render",
    "run_doctor",
    "settings_check",
    "states_check",
    "topic_checks",
    "workers_check",
]


async def diagnose(settings: Settings, *, timeout_s: float = 5.0) -> list[Check]:
    """Every check, in the order a person reads them; each network step waits ``timeout_s`` at
    most. Redis, Kafka and the model are checked side by side."""
    t = settings.topics
    client = quick_client(settings, timeout_s)
    try:
        redis, kafka, model = await asyncio.gather(
            check_redis(client, settings, timeout_s),
            check_kafka(settings, timeout_s),
            check_model(client, settings, timeout_s),
        )
        if redis.reachable:
            states = await guard("states", timeout_s, check_states(client, settings, model))
            workers, live = await check_workers(client, settings, model, kafka, timeout_s)
        else:
            states = Check("states", "warn", "not checked: Redis is unreachable")
            workers, live = Check("workers", "warn", "not checked: Redis is unreachable"), None
    finally:
        await client.aclose()
    window = None if model.spec is None else bool(model.spec.window)
    topics = topic_checks(settings, kafka.topics, window)
    if isinstance(kafka.offsets, GroupOffsets):
        lag = lag_check(kafka.offsets, None if live is None else len(live))
    elif kafka.offsets is None:
        missing = "Kafka is unreachable" if kafka.topics is None else f"no topic {t.events!r}"
        lag = Check("consumer lag", "warn", f"not checked: {missing}")
    else:
        lag = kafka.offsets
    return [
        settings_check(settings),
        *redis.checks,
        kafka.check,
        *topics,
        model.check,
        states,
        workers,
        producers_check(live if redis.reachable else None),
        lag,
    ]


def run_doctor(settings: Settings, *, as_json: bool = False, timeout_s: float = 5.0) -> int:
    """Print the checks; 1 if any failed, else 0 (warnings pass)."""
    checks = asyncio.run(diagnose(settings, timeout_s=timeout_s))
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        doc = {"status": overall(checks), "checks": [asdict(c) for c in checks]}
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    elif sys.stdout.isatty():
        print_table(checks)
    else:
        print(render(checks))
    return 1 if failed else 0
