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
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from rich.console import Console
from rich.table import Table

from streamer.errors import StateCodecError, StoreUnavailable, StreamerError
from streamer.kafka import group_lag, group_offsets
from streamer.model import ModelSpec
from streamer.model.artifact import load_artifact
from streamer.model.registry import Registry
from streamer.ops.presence import WorkerInfo, live_workers
from streamer.serve.predictor import resolve_device
from streamer.settings import Settings
from streamer.state import RedisStateStore, redis_client
from streamer.state.codec import decode

__all__ = ["Check", "diagnose", "run_doctor"]

Status = Literal["ok", "warn", "fail"]
T = TypeVar("T")

#: the most state keys sampled, and SCAN calls made to find them
SAMPLE_KEYS = 100
_SCAN_CALLS = 50


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass
class _Model:
    """The model workers would serve, as far as the doctor could tell."""

    check: Check
    spec: ModelSpec | None = None
    version: str | None = None


@dataclass(frozen=True)
class GroupOffsets:
    """The consumer group's state and offsets on the events topic, by partition."""

    group: str
    topic: str
    state: str
    members: int
    end: dict[int, int]
    start: dict[int, int]
    committed: dict[int, int]


@dataclass
class _Kafka:
    """What the broker said; ``topics`` is None when it could not be asked, ``offsets`` a failed
    check when the group's offsets could not be read."""

    check: Check
    topics: dict[str, tuple[int, int]] | None = None  # name -> (partitions, replication)
    offsets: GroupOffsets | Check | None = None


@dataclass
class _Redis:
    checks: list[Check] = field(default_factory=list)
    reachable: bool = False


async def diagnose(settings: Settings, *, timeout_s: float = 5.0) -> list[Check]:
    """Every check, in the order a person reads them; each network step waits ``timeout_s`` at
    most. Redis, Kafka and the model are checked side by side."""
    t = settings.topics
    client = _redis(settings, timeout_s)
    try:
        redis, kafka, model = await asyncio.gather(
            _check_redis(client, settings, timeout_s),
            _check_kafka(settings, timeout_s),
            _check_model(client, settings, timeout_s),
        )
        if redis.reachable:
            states = await _guard("states", timeout_s, _check_states(client, settings, model))
            workers, live = await _check_workers(client, settings, model, kafka, timeout_s)
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
        _print_table(checks)
    else:
        print(render(checks))
    return 1 if failed else 0


# -------------------------------------------------------------------------- pure verdicts --

SYMBOLS: dict[Status, str] = {"ok": "✓", "warn": "!", "fail": "✗"}


def overall(checks: Sequence[Check]) -> Status:
    """
    >>> overall([Check("a", "ok", ""), Check("b", "warn", "")])
    'warn'
    """
    statuses = {c.status for c in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


def summary(checks: Sequence[Check]) -> str:
    n = Counter(c.status for c in checks)
    return f"{len(checks)} checks: {n['ok']} ok, {n['warn']} warnings, {n['fail']} failed"


def render(checks: Sequence[Check]) -> str:
    """One line per check, readable without colour, and the summary.

    >>> print(render([Check("redis", "fail", "cannot reach Redis")]))
    ✗ redis              cannot reach Redis
    1 checks: 0 ok, 0 warnings, 1 failed
    """
    width = max(18, *(len(c.name) for c in checks))
    lines = [f"{SYMBOLS[c.status]} {c.name:<{width}} {c.detail}" for c in checks]
    return "\n".join([*lines, summary(checks)])


def _print_table(checks: Sequence[Check]) -> None:
    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    table = Table(show_header=False, box=None, padding=(0, 1))
    for c in checks:
        table.add_row(f"[{colour[c.status]}]{SYMBOLS[c.status]}[/]", c.name, c.detail)
    console = Console(highlight=False)
    console.print(table)
    console.print(summary(checks))


def redact(url: str) -> str:
    """A URL without its password.

    >>> redact("redis://app:s3cret@cache:6379/0")
    'redis://app:***@cache:6379/0'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def settings_check(settings: Settings) -> Check:
    """The settings that matter for everything else, and the ones that cannot work."""
    k, problems = settings.kafka, []
    try:
        device = f"{resolve_device(settings.device)} ({settings.device})"
    except StreamerError as exc:
        device, problems = settings.device, [str(exc)]
    for what, path in (
        ("ssl_cafile", k.ssl_cafile),
        ("ssl_certfile", k.ssl_certfile),
        ("ssl_keyfile", k.ssl_keyfile),
    ):
        if path is not None and k.security_protocol.endswith("SSL") and not path.is_file():
            problems.append(f"STREAMER_KAFKA__{what.upper()} {path} is not a file")
    if k.security_protocol.startswith("SASL") and not (k.sasl_username and k.sasl_password):
        problems.append(f"{k.security_protocol} needs STREAMER_KAFKA__SASL_USERNAME and _PASSWORD")
    scheme = urlsplit(settings.redis.url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        problems.append(f"STREAMER_REDIS__URL must be redis://, rediss:// or unix://, not {scheme}")
    detail = (
        f"app {settings.app_id}, model {settings.model_name}, device {device}, "
        f"{settings.processing_guarantee}, Kafka {k.bootstrap_servers}, "
        f"Redis {redact(settings.redis.url)}"
    )
    if problems:
        return Check("settings", "fail", "; ".join([*problems, detail]))
    return Check("settings", "ok", detail)


def eviction_check(policy: str, limit: str | None, ttl_s: int) -> Check:
    """Whether Redis may drop states when its memory (``limit``, None: no maxmemory) is full. An
    evicted state is gone: its entity restarts from zeros at its next event, silently.

    >>> [eviction_check(p, "1G", 0).status for p in ("allkeys-lru", "volatile-lru")]
    ['warn', 'ok']
    """
    name, head = "redis eviction", f"{policy}, maxmemory {limit}"
    if limit is None:
        return Check(name, "ok", f"{policy}, no maxmemory: Redis evicts nothing")
    if policy == "noeviction":
        return Check(name, "ok", f"{head}: when full, writes fail and workers wait for room")
    if policy.startswith("allkeys-"):
        why = "any key, states and the model registry included"
    elif ttl_s:
        why = f"states before they expire (they have a TTL: STREAMER_STATE_TTL_S={ttl_s})"
    else:
        return Check(name, "ok", f"{head}: states have no TTL, so it never evicts them")
    return Check(
        name,
        "warn",
        f"{head}: when full, Redis evicts {why}; an evicted entity restarts from zeros",
    )


def persistence_check(save: str | None, aof: bool, last_save_ok: bool) -> Check:
    """Whether the states survive a Redis restart: ``save`` is the RDB schedule (None when CONFIG
    GET is refused, as managed services do), ``aof`` whether the append-only file is on.

    >>> persistence_check("", False, True).status
    'warn'
    """
    name = "redis persistence"
    rdb = "RDB schedule not visible" if save is None else f"RDB (save {save})" if save else ""
    if not rdb and not aof:
        return Check(
            name,
            "warn",
            "no RDB and no AOF: a Redis restart loses every state (entities restart from zeros)",
        )
    detail = ", ".join([rdb or "RDB off", "AOF on" if aof else "AOF off"])
    if save and not last_save_ok:
        return Check(name, "warn", detail + "; the last RDB snapshot failed")
    return Check(name, "ok", detail)


def topic_checks(
    settings: Settings, topics: dict[str, tuple[int, int]] | None, window_model: bool | None
) -> list[Check]:
    """One check per topic of the settings; ``topics`` is what exists (None: Kafka not asked).

    The events topic must exist, or nothing reaches the workers (is its name right?). The worker
    creates the others at start, so their absence only warns; only window models use the window
    topic.
    """
    t = settings.topics
    out = []
    for role, name in (
        ("events", t.events),
        ("predictions", t.predictions),
        ("windows", t.windows),
        ("dead-letter", t.dead_letter),
    ):
        status: Status = "warn"
        if topics is None:
            detail = f"{name!r} not checked: Kafka is unreachable"
        elif name in topics:
            status, detail = "ok", "{!r}: {} partitions, replication {}".format(name, *topics[name])
        elif role == "events":
            status, detail = "fail", f"{name!r} does not exist (a typo in STREAMER_TOPICS__EVENTS?)"
        elif role == "windows" and window_model is False:
            status, detail = "ok", f"{name!r} absent: only window models publish there"
        else:
            detail = (
                f"{name!r} does not exist yet: the worker creates it ({t.partitions} partitions)"
            )
        out.append(Check(f"topic {role}", status, detail))
    return out


def states_check(
    records: Sequence[tuple[str, tuple[int, int, int]] | None],
    more: bool,
    spec: ModelSpec | None,
    version: str | None,
    on_model_change: str,
) -> Check:
    """What a sample of stored states would meet: ``records`` holds each state's model version and
    shape ``(rows, width, tensors)``, or None for one that cannot be decoded; ``more``: there are
    states beyond the sample. Workers reset to zeros (keeping the fences) the states of another
    shape and those that cannot be decoded, and those of another version when ``on_model_change``
    is ``reset``."""
    if not records:
        return Check("states", "ok", "no stored states of this model name yet")
    good = [r for r in records if r is not None]
    versions = Counter(v for v, _ in good)
    shown = ", ".join(f"{v} ({n})" for v, n in versions.most_common(3))
    detail = f"{len(records)} sampled{' (there are more)' if more else ''}"
    detail += f"; model versions {shown}{' and more' if len(versions) > 3 else ''}" if good else ""
    problems = []
    if len(good) < len(records):
        problems.append(f"{len(records) - len(good)} cannot be decoded")
    if spec is not None:
        rows, width = spec.state_shape
        other = Counter(shape for _, shape in good if shape != (rows, width, spec.state_tensors))
        if other:
            (r, w, n), _ = other.most_common(1)[0]
            problems.append(
                f"{other.total()} have another shape ({n} tensors of {r}x{w}; the model's: "
                f"{spec.state_tensors} of {rows}x{width})"
            )
        stale = sum(n for v, n in versions.items() if v != version)
        if on_model_change == "reset" and version is not None and stale:
            problems.append(f"{stale} were written by another version (on_model_change=reset)")
    if problems:
        return Check("states", "warn", f"{detail}; {'; '.join(problems)}: workers reset them")
    return Check("states", "ok", detail + ("" if spec is None else "; all fit the model"))


def workers_check(
    workers: Sequence[WorkerInfo], app_id: str, version: str | None, partitions: int | None
) -> Check:
    """The live workers of the app, and whether they serve the model found here and own every
    partition of the events topic (``partitions``, when known)."""
    name = "workers"
    if not workers:
        return Check(
            name, "warn", f"no live worker of app {app_id!r} (none announced itself in Redis)"
        )
    shown = ", ".join(
        f"{w.worker_id} ({w.model_version}, partitions {_ranges(w.partitions)})" for w in workers
    )
    problems = []
    other = [w.worker_id for w in workers if version and w.model_version != version]
    if other:
        problems.append(f"{', '.join(other)} serve another model than {version}")
    if partitions is not None:
        owned = {p for w in workers for p in w.partitions}
        orphans = sorted(set(range(partitions)) - owned)
        if orphans:
            problems.append(f"partitions {_ranges(orphans)} owned by none (a rebalance?)")
        if len(workers) > partitions:
            problems.append(f"{len(workers) - partitions} idle: more workers than partitions")
    detail = f"{len(workers)} live: {shown}"
    return Check(name, "warn" if problems else "ok", "; ".join([detail, *problems]))


def lag_check(offsets: GroupOffsets, live: int | None) -> Check:
    """The consumer group's lag on the events topic: end offset less committed offset, or less
    the start of the partition where the group has committed nothing (it starts there). Events
    waiting with no worker alive (``live``: announced in Redis, None when unknown) and no member
    in the group warn: nobody will process them.

    >>> o = GroupOffsets("g", "ev", "Stable", 1, {0: 10, 1: 5}, {0: 0, 1: 0}, {0: 10})
    >>> lag_check(o, 1).detail
    "group 'g' (Stable, 1 members): 5 events waiting on 'ev', most on partition 1 (5)"
    """
    o = offsets
    lag = group_lag(o.committed, o.start, o.end)
    total = sum(lag.values())
    head = f"group {o.group!r} ({o.state}, {o.members} members)"
    if not total:
        return Check("consumer lag", "ok", f"{head}: no lag on {o.topic!r}")
    p = max(lag, key=lambda k: lag[k])
    detail = f"{head}: {total} events waiting on {o.topic!r}, most on partition {p} ({lag[p]})"
    if not o.committed:
        detail = f"{head}: nothing committed yet, {total} events waiting on {o.topic!r}"
    if live == 0 and not o.members:
        return Check("consumer lag", "warn", f"{detail}; no worker is consuming them")
    return Check("consumer lag", "ok", detail)


def _ranges(ps: Sequence[int]) -> str:
    """
    >>> _ranges([0, 1, 2, 5, 7, 8])
    '0-2,5,7-8'
    """
    out: list[str] = []
    for p in sorted(ps):
        if out and out[-1].split("-")[-1] == str(p - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{p}"
        else:
            out.append(str(p))
    return ",".join(out) or "none"


# ---------------------------------------------------------------------------------- I/O --


async def _within(timeout_s: float, aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, timeout_s)


async def _guard(name: str, timeout_s: float, aw: Awaitable[Check]) -> Check:
    """A check that cannot crash the doctor: a timeout or an error is its failed verdict."""
    try:
        return await _within(timeout_s * 2, aw)
    except TimeoutError:
        return Check(name, "fail", f"no answer within {timeout_s * 2:.0f}s")
    except (StreamerError, RedisError, OSError) as exc:
        return Check(name, "fail", _why(exc))


def _why(exc: BaseException) -> str:
    """
    >>> _why(OSError("refused")), _why(TimeoutError())
    ('OSError: refused', 'TimeoutError')
    """
    text, kind = str(exc), type(exc).__name__
    return text if text.startswith(kind) else f"{kind}: {text}" if text else kind


def _redis(settings: Settings, timeout_s: float) -> Any:
    r = settings.redis
    quick = r.model_copy(update={"socket_timeout_s": min(timeout_s, r.socket_timeout_s)})
    return redis_client(settings.model_copy(update={"redis": quick}))


async def _check_redis(client: Any, settings: Settings, timeout_s: float) -> _Redis:
    url = redact(settings.redis.url)
    out = _Redis()
    try:
        if isinstance(client, RedisCluster):
            await _within(timeout_s, client.initialize())  # the nodes and the slot map
        await _within(timeout_s, client.ping())  # connects
        started = time.perf_counter()
        await _within(timeout_s, client.ping())
        ping_ms = (time.perf_counter() - started) * 1000
    except TimeoutError:
        out.checks.append(Check("redis", "fail", f"no answer from Redis at {url} in {timeout_s}s"))
    except (AuthenticationError, AuthorizationError) as exc:
        out.checks.append(
            Check("redis", "fail", f"Redis at {url} refused the credentials ({_why(exc)})")
        )
    except (RedisError, RedisClusterException, OSError) as exc:
        out.checks.append(Check("redis", "fail", f"cannot reach Redis at {url}: {_why(exc)}"))
    if out.checks:
        skipped = "not checked: Redis is unreachable"
        out.checks += [Check(n, "warn", skipped) for n in ("redis eviction", "redis persistence")]
        return out
    out.reachable = True
    if isinstance(client, RedisCluster):
        out.checks += await _check_cluster(client, settings, url, ping_ms, timeout_s)
        return out
    try:
        info: dict[str, Any] = await _within(timeout_s, client.info())
    except (RedisError, TimeoutError) as exc:  # an ACL without +info
        out.checks.append(
            Check("redis", "ok", f"{url}: PING {ping_ms:.1f} ms; INFO refused ({_why(exc)})")
        )
        hidden = "not checked: INFO is refused to this user"
        out.checks += [Check(n, "warn", hidden) for n in ("redis eviction", "redis persistence")]
        return out
    role = info.get("role", "?")
    head = f"Redis {info.get('redis_version', '?')} ({info.get('redis_mode', '?')}, {role})"
    detail = f"{head} at {url}: PING {ping_ms:.1f} ms, {info.get('used_memory_human', '?')} used"
    if role != "master":
        out.checks.append(Check("redis", "fail", f"{detail}; a read-only replica cannot store"))
    else:
        out.checks.append(Check("redis", "ok", detail))
    policy = str(info.get("maxmemory_policy", "noeviction"))
    limit = str(info.get("maxmemory_human")) if int(info.get("maxmemory", 0)) else None
    out.checks.append(eviction_check(policy, limit, settings.state_ttl_s))
    save: str | None
    try:
        got: dict[Any, Any] = await _within(timeout_s, client.config_get("save"))
        raw = got.get(b"save", got.get("save", b""))
        save = (raw.decode() if isinstance(raw, bytes) else str(raw)).strip()
    except (ResponseError, TimeoutError):  # managed services rename or forbid CONFIG
        save = None
    out.checks.append(
        persistence_check(
            save,
            bool(int(info.get("aof_enabled", 0))),
            info.get("rdb_last_bgsave_status", "ok") == "ok",
        )
    )
    return out


async def _check_cluster(
    client: RedisCluster, settings: Settings, url: str, ping_ms: float, timeout_s: float
) -> list[Check]:
    """A Redis Cluster: its state and slots, then eviction and persistence on every primary (the
    worst one shown)."""
    try:
        state: dict[str, Any] = await _within(timeout_s, client.cluster_info())
        primaries = client.get_primaries()
        infos = [await _within(timeout_s, n.execute_command("INFO")) for n in primaries]
    except (RedisError, TimeoutError) as exc:
        hidden = f"not checked: {_why(exc)}"
        return [
            Check("redis", "warn", f"Redis Cluster at {url}: PING {ping_ms:.1f} ms; {hidden}"),
            *[Check(n, "warn", hidden) for n in ("redis eviction", "redis persistence")],
        ]
    ok_slots = int(state.get("cluster_slots_ok", 0))
    replicas = len(client.get_replicas())
    detail = (
        f"Redis Cluster {infos[0].get('redis_version', '?')} at {url}: {len(primaries)} "
        f"primaries, {replicas} replicas, {ok_slots}/16384 slots ok, PING {ping_ms:.1f} ms, "
        f"{sum(int(i.get('used_memory', 0)) for i in infos) / 2**20:.1f} MiB used"
    )
    healthy = state.get("cluster_state") == "ok" and ok_slots == 16384
    if not healthy:
        detail += f"; cluster_state {state.get('cluster_state')}: some states cannot be stored"
    checks = [Check("redis", "ok" if healthy else "fail", detail)]
    evictions, persistence = [], []
    for node, info in zip(primaries, infos, strict=True):
        policy = str(info.get("maxmemory_policy", "noeviction"))
        limit = str(info.get("maxmemory_human")) if int(info.get("maxmemory", 0)) else None
        evictions.append(eviction_check(policy, limit, settings.state_ttl_s))
        try:
            got = await _within(timeout_s, node.execute_command("CONFIG GET", "save"))
            raw = got.get(b"save", got.get("save", b"")) if isinstance(got, dict) else b""
            save: str | None = (raw.decode() if isinstance(raw, bytes) else str(raw)).strip()
        except (ResponseError, TimeoutError):
            save = None
        aof = bool(int(info.get("aof_enabled", 0)))
        persistence.append(
            persistence_check(save, aof, info.get("rdb_last_bgsave_status", "ok") == "ok")
        )
    for named in (evictions, persistence):
        worst = next(c for c in named if c.status == overall(named))
        n = sum(c.status == worst.status for c in named)
        checks.append(dataclasses.replace(worst, detail=f"{worst.detail} ({n} of {len(named)})"))
    return checks


async def _check_kafka(settings: Settings, timeout_s: float) -> _Kafka:
    k = settings.kafka
    where = k.bootstrap_servers
    options = {"bootstrap_servers": where, "request_timeout_ms": int(timeout_s * 1000)}
    admin = AIOKafkaAdminClient(**options, **k.client_options())
    try:
        try:
            await _within(timeout_s, admin.start())
            cluster = await _within(timeout_s, admin.describe_cluster())
        except TimeoutError:
            return _Kafka(
                Check("kafka", "fail", f"no answer from Kafka at {where} in {timeout_s}s")
            )
        except (KafkaError, OSError) as exc:
            sasl = k.security_protocol.startswith("SASL")
            hint = " (or it refused the SASL credentials)" if sasl else ""
            return _Kafka(
                Check("kafka", "fail", f"cannot reach Kafka at {where}{hint}: {_why(exc)}")
            )
        brokers = len(cluster.get("brokers", ()))
        check = Check(
            "kafka",
            "ok",
            f"{brokers} broker{'s' if brokers != 1 else ''} at {where} "
            f"(cluster {cluster.get('cluster_id')}, controller {cluster.get('controller_id')})",
        )
        t = settings.topics
        wanted = [t.events, t.predictions, t.windows, t.dead_letter]
        try:
            existing = set(await _within(timeout_s, admin.list_topics()))
            present = [n for n in dict.fromkeys(wanted) if n in existing]
            described = await _within(timeout_s, admin.describe_topics(present)) if present else []
        except (TimeoutError, KafkaError, OSError) as exc:
            return _Kafka(Check("kafka", "fail", f"{check.detail}; listing topics: {_why(exc)}"))
        topics = {
            d["topic"]: (len(d["partitions"]), len(d["partitions"][0]["replicas"]))
            for d in described
            if d["partitions"]
        }
        offsets: GroupOffsets | Check | None = None
        if t.events in topics:
            try:
                offsets = await _within(
                    timeout_s * 2, _group_offsets(admin, settings, topics[t.events][0], timeout_s)
                )
            except TimeoutError:
                offsets = Check("consumer lag", "fail", f"no answer within {timeout_s * 2:.0f}s")
            except (KafkaError, OSError) as exc:
                offsets = Check("consumer lag", "fail", f"reading offsets: {_why(exc)}")
        return _Kafka(check, topics, offsets)
    finally:
        await admin.close()


async def _group_offsets(
    admin: Any, settings: Settings, partitions: int, timeout_s: float
) -> GroupOffsets:
    group, topic = settings.app_id, settings.topics.events
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    described = await admin.describe_consumer_groups([group])
    info = described[0].to_object()["groups"][0]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",  # what the workers can read
        request_timeout_ms=int(timeout_s * 1000),
        **settings.kafka.client_options(),
    )
    try:
        await consumer.start()  # inside: a start that times out is stopped too
        committed, start, end = await group_offsets(admin, consumer, group, tps)
    finally:
        await consumer.stop()
    return GroupOffsets(
        group, topic, str(info["state"]), len(info["members"]), end, start, committed
    )


async def _check_model(client: aioredis.Redis, settings: Settings, timeout_s: float) -> _Model:
    """The model a worker would start with (see ``workers.app.build_handler``): the registry's
    active version of the model name, else the artifact at ``model_path``. Loaded on the CPU."""
    name, path = settings.model_name, settings.model_path
    unread = ""
    if settings.registry_poll_s:
        registry = Registry(client, name)
        try:
            version = await _within(timeout_s, registry.active())
            if version is not None:
                art = await _within(timeout_s * 2, registry.load(version))
                also = f"; STREAMER_MODEL_PATH {path} is not used" if path else ""
                return _model(art.spec, art.version, f"the registry ({name} active){also}")
        except StoreUnavailable:
            unread = "; the registry could not be read"
        except StreamerError as exc:  # workers would not start: they load the active version
            return _Model(Check("model", "fail", f"the active version of {name}: {exc}"))
        except (TimeoutError, RedisError, OSError) as exc:
            unread = f"; the registry could not be read ({_why(exc)})"
    if path is None:
        return _Model(
            Check(
                "model",
                "fail",
                "no model: set STREAMER_MODEL_PATH or pass --model, or activate a version of "
                f"{name!r} (streamer model activate){unread}",
            )
        )
    try:
        art = await asyncio.to_thread(load_artifact, path)
    except Exception as exc:  # whatever it is, the workers would not start with it
        return _Model(Check("model", "fail", str(exc) or type(exc).__name__))
    found = _model(art.spec, art.version, str(path) + unread)
    if unread:
        found.check = Check("model", "warn", found.check.detail)
    return found


def _model(spec: ModelSpec, version: str, source: str) -> _Model:
    what = f"{len(spec.classes)} classes" if spec.task == "classify" else f"horizon {spec.horizon}"
    window = f", window {spec.window}" if spec.window else ""
    detail = (
        f"{version} from {source}: {spec.cell} {spec.task}, "
        f"{spec.num_layers}x{spec.hidden_size}, {what}{window}"
    )
    return _Model(Check("model", "ok", detail), spec, version)


async def _check_states(client: aioredis.Redis, settings: Settings, model: _Model) -> Check:
    """Decode a sample of the model name's stored states (SCAN, never KEYS)."""
    store = RedisStateStore.around(client, settings.model_name)  # the client is closed later
    entities: list[str] = []
    cursor, calls = 0, 0
    async for page_cursor, page in store.scan("*"):
        entities, calls, cursor = entities + page, calls + 1, page_cursor
        if len(entities) >= SAMPLE_KEYS or calls >= _SCAN_CALLS:
            break
    more = cursor != 0 or len(entities) > SAMPLE_KEYS
    raws = await store.get_many(entities[:SAMPLE_KEYS]) if entities else []
    records: list[tuple[str, tuple[int, int, int]] | None] = []
    for raw in raws:
        if not isinstance(raw, bytes):  # expired since, or not a string
            continue
        try:
            rec = decode(raw)
        except (StateCodecError, ValueError):
            records.append(None)
            continue
        tensors = 2 if rec.c.shape[0] else 1
        records.append((rec.model_version, (rec.layers, rec.hidden_size, tensors)))
    return states_check(records, more, model.spec, model.version, settings.on_model_change)


async def _check_workers(
    client: aioredis.Redis, settings: Settings, model: _Model, kafka: _Kafka, timeout_s: float
) -> tuple[Check, list[WorkerInfo] | None]:
    try:
        workers = await _within(timeout_s, live_workers(client, settings.app_id))
    except (TimeoutError, RedisError, OSError) as exc:
        return Check("workers", "fail", f"reading the announcements: {_why(exc)}"), None
    topics = kafka.topics or {}
    events = topics.get(settings.topics.events)
    check = workers_check(
        workers, settings.app_id, model.version, None if events is None else events[0]
    )
    return check, workers


def producers_check(workers: Sequence[WorkerInfo] | None) -> Check:
    """What the live workers' dead letters say of the producers: events of one entity on two
    partitions (producers that hash keys differently), and states that kept changing under a
    worker (two workers writing one entity)."""
    name = "producers"
    if workers is None:
        return Check(name, "warn", "not checked: the workers could not be read")
    if not workers:
        return Check(name, "warn", "not checked: no live worker")
    conflicts = sum(w.dead_letters.get("partition_conflict", 0) for w in workers)
    contended = sum(w.dead_letters.get("contended", 0) for w in workers)
    problems = []
    if conflicts:
        problems.append(
            f"{conflicts} events came on another partition than their entity's and were "
            "dead-lettered (partition_conflict): a producer hashes keys differently (librdkafka "
            "and kcat default to CRC32; produce with -X topic.partitioner=murmur2_random), or "
            "the topic was repartitioned (STREAMER_ON_PARTITION_CHANGE=takeover for a while)"
        )
    if contended:
        problems.append(
            f"{contended} events were dead-lettered because their entity's state kept changing "
            "under a worker (contended): something else writes the states"
        )
    if problems:
        return Check(name, "warn", "; ".join(problems))
    total = sum(sum(w.dead_letters.values()) for w in workers)
    return Check(
        name,
        "ok",
        f"every entity's events on one partition ({total} dead letters since the workers "
        "started, none for that)",
    )
