"""The doctor's questions to Redis, Redis Cluster, Kafka and the registry, each within a timeout;
the answers go to the verdicts in :mod:`streamer.ops.doctor.verdicts`."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

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

from streamer.errors import StateCodecError, StoreUnavailable, StreamerError
from streamer.kafka import group_offsets
from streamer.kafka.clients import tls_refusal as kafka_tls_refusal
from streamer.model import ModelSpec
from streamer.model.artifact import load_artifact
from streamer.model.registry import Registry
from streamer.ops.doctor.verdicts import (
    Check,
    GroupOffsets,
    eviction_check,
    overall,
    persistence_check,
    redact,
    states_check,
    workers_check,
)
from streamer.ops.presence import WorkerInfo, live_workers
from streamer.settings import Settings
from streamer.state import RedisStateStore, redis_client
from streamer.state.codec import decode
from streamer.state.connect import tls_refusal

T = TypeVar("T")

#: the most state keys sampled, and how long SCAN may look for them: a keyspace that once held
#: many keys keeps a large, sparse hash table for a while, and a fixed number of SCAN calls can
#: then miss the few keys that are left
SAMPLE_KEYS = 100
_SCAN_BUDGET_S = 2.0


@dataclass
class _Model:
    """The model workers would serve, as far as the doctor could tell."""

    check: Check
    spec: ModelSpec | None = None
    version: str | None = None


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


async def _within(timeout_s: float, aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, timeout_s)


async def guard(name: str, timeout_s: float, aw: Awaitable[Check]) -> Check:
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


def quick_client(settings: Settings, timeout_s: float) -> Any:
    r = settings.redis
    quick = r.model_copy(update={"socket_timeout_s": min(timeout_s, r.socket_timeout_s)})
    return redis_client(settings.model_copy(update={"redis": quick}))


async def check_redis(client: Any, settings: Settings, timeout_s: float) -> _Redis:
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
        refused = tls_refusal(exc)
        why = (
            f"Redis at {url}: its TLS certificate did not verify ({refused}); check "
            "STREAMER_REDIS__SSL_CA_CERTS"
            if refused
            else f"cannot reach Redis at {url}: {_why(exc)}"
        )
        out.checks.append(Check("redis", "fail", why))
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


async def check_kafka(settings: Settings, timeout_s: float) -> _Kafka:
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
            refused = await kafka_tls_refusal(settings)
            if refused:
                return _Kafka(Check("kafka", "fail", refused))
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


async def check_model(client: aioredis.Redis, settings: Settings, timeout_s: float) -> _Model:
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
    if spec.task == "next":
        known = spec.outputs - 1
        what = f"next {spec.next} of {known:,} values, top {spec.served_top_k}"
        if spec.groups:
            what += (
                f", a two-level softmax over {spec.group_count} groups"
                f" ({spec.groups_searched} searched{', exact' if spec.groups_exact else ''})"
            )
        if len(spec.categorical) > 1:
            others = ", ".join(spec.categorical[1:])
            what += f"; inputs {others}" + (
                f" hashed into {spec.hash_buckets:,} buckets" if spec.hash_buckets else ""
            )
    window = f", window {spec.window}" if spec.window else ""
    members = f", an ensemble of {spec.members}" if spec.members > 1 else ""
    levels = f", {'/'.join(map(str, spec.levels))}% intervals" if spec.levels else ""
    season = (
        f", seasonal components over {spec.season}"
        + (f" and {spec.season2}" if spec.season2 else "")
        + " steps"
        if spec.season
        else ""
    )
    detail = (
        f"{version} from {source}: {spec.cell} {spec.task}, "
        f"{spec.num_layers}x{spec.hidden_size}, {what}{window}{members}{levels}{season}"
    )
    return _Model(Check("model", "ok", detail), spec, version)


async def check_states(client: aioredis.Redis, settings: Settings, model: _Model) -> Check:
    """Decode a sample of the model name's stored states (SCAN, never KEYS)."""
    store = RedisStateStore.around(client, settings.model_name)  # the client is closed later
    entities: list[str] = []
    cursor, deadline = 0, asyncio.get_running_loop().time() + _SCAN_BUDGET_S
    async for page_cursor, page in store.scan("*"):
        entities, cursor = entities + page, page_cursor
        if len(entities) >= SAMPLE_KEYS or asyncio.get_running_loop().time() > deadline:
            break
    more = cursor != 0 or len(entities) > SAMPLE_KEYS
    raws = await store.get_many(entities[:SAMPLE_KEYS]) if entities else []
    records: list[tuple[str, tuple[int, int, int, int]] | None] = []
    for raw in raws:
        if not isinstance(raw, bytes):  # expired since, or not a string
            continue
        try:
            rec = decode(raw)
        except (StateCodecError, ValueError):
            records.append(None)
            continue
        tensors = 2 if rec.c.shape[0] else 1
        records.append((rec.model_version, (rec.layers, rec.hidden_size, tensors, len(rec.comp))))
    return states_check(records, more, model.spec, model.version, settings.on_model_change)


async def check_workers(
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
