"""The doctor's verdicts: pure functions from what the services said to one :class:`Check` each,
and how the checks are printed. No I/O here, so each verdict is unit-tested on its own."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table

from streamer.errors import StreamerError
from streamer.kafka import group_lag
from streamer.model import ModelSpec
from streamer.ops.presence import WorkerInfo
from streamer.serve.predictor import resolve_device
from streamer.settings import Settings

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


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


def print_table(checks: Sequence[Check]) -> None:
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
    records: Sequence[tuple[str, tuple[int, int, int, int]] | None],
    more: bool,
    spec: ModelSpec | None,
    version: str | None,
    on_model_change: str,
) -> Check:
    """What a sample of stored states would meet: ``records`` holds each state's model version and
    shape ``(rows, width, tensors, components)``, or None for one that cannot be decoded;
    ``more``: there are states beyond the sample. Workers reset to zeros (keeping the fences) the
    states of another shape and those that cannot be decoded, and those of another version when
    ``on_model_change`` is ``reset``."""
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
        mine = (rows, width, spec.state_tensors, spec.components)
        other = Counter(shape for _, shape in good if shape != mine)
        if other:
            (r, w, n, e), _ = other.most_common(1)[0]

            def comps(k: int) -> str:
                return f" and {k} components" if k else ""

            problems.append(
                f"{other.total()} have another shape ({n} tensors of {r}x{w}{comps(e)}; the "
                f"model's: {spec.state_tensors} of {rows}x{width}{comps(spec.components)})"
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
