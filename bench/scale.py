"""Benchmark: streamer's throughput with one and two worker processes, and failover times.

On the real broker and Redis: events per second with 1 and 2 workers, and the time a failover (a
killed worker), a clean leave and a join take.

    python bench/scale.py [--events N] [--entities N] [--partitions N] [--workers 1,2]
                          [--rate R] [--repeats N] [--worker-env KEY=VALUE ...]

(``make bench-scale`` runs it with the defaults.) Two parts, on the same broker and Redis:

- **throughput**: ``streamer worker`` processes in one consumer group, first 1, then 2, each time
  over the same backlog of ``--events`` events of ``--entities`` entities, measured as
  ``bench/throughput.py`` measures one (same settings, same code): from the first 2% of the
  predictions, and with several workers from the moment their group has settled, to the last. The
  workers' CPU per event (their sum), Kafka's and Redis's, and each worker's events per second: the
  predictions of the partitions it owned, and its CPU per event.
- **failover**: two workers with streamer's default settings (its session timeout among them) serve
  a steady ``--rate`` events per second. Then, ``--repeats`` times: one is killed (SIGKILL), a new
  one joins, one leaves cleanly (SIGTERM), a new one joins. For each: seconds from the signal (or
  from the new process's start) to the new owner's assignment, to its first prediction on each
  partition that moved, and to every moved partition's predictions being less than a second behind
  their events again; and the longest pause of the partitions that did not move.

Who sent a prediction is told by its Kafka timestamp. A worker logs ``partitions assigned`` (they
run at ``-l info``) before it fetches from them, and the previous owner sent its last prediction on
them before it left the group or died; so on a moved partition, the first prediction stamped at or
after the new owner's assignment is the new owner's.

Progress on stderr, one JSON document on stdout, also saved under ``build/bench/``. Starts its own
Kafka and Redis (ports 29092 and 26379) unless ``--bootstrap`` and ``--redis-url`` are given;
``--worker-env`` passes more settings to every worker (``STREAMER_BATCH__MAX_SIZE=512``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import orjson
import redis.asyncio as aioredis
from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import BaseModel, ValidationError
from throughput import (  # bench/ is the script's directory, first on sys.path
    Reader,
    Run,
    Worker,
    backlog,
    bench_services,
    common_options,
    config,
    create_topics,
    machine,
    new_producer,
    new_run,
    offer,
    save,
    stop_all,
    throughput,
)

from streamer.kafka.clients import session_timeout_s
from streamer.settings import Settings

#: a caught-up partition's predictions are at most this far behind their events
BEHIND_MS = 1000
#: the longest wait for a handover, and for the group to settle after one (seconds)
HANDOVER_S = 120.0
SETTLE_S = 2.0


# ------------------------------------------------------------------------ worker logs --

_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\] \[\d+\] \[INFO\]:? (.*)")
_ASSIGNMENT = re.compile(r"partitions (assigned|revoked|lost): \[([\d, ]*)\]")
#: aiokafka's line when the consumer asks to join (or rejoin) its group
_JOINING = "(Re-)joining group"


def log_lines(worker: Worker) -> Iterator[tuple[int, str]]:
    """The worker's INFO lines: their time in ms since the epoch, and their message."""
    for line in worker.log.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m:
            when, ms, message = m.groups()
            at = time.mktime(time.strptime(when, "%Y-%m-%d %H:%M:%S"))
            yield int(at) * 1000 + int(ms), message


@dataclass(frozen=True)
class Move:
    """A worker's log line ``partitions assigned`` (or ``revoked``, ``lost``), and its time in
    ms."""

    at_ms: int
    assigned: bool
    partitions: frozenset[int]


def moves(worker: Worker) -> list[Move]:
    out = []
    for at, message in log_lines(worker):
        m = _ASSIGNMENT.match(message)
        if m:
            what, parts = m.groups()
            owned = frozenset(int(p) for p in parts.split(",") if p.strip())
            out.append(Move(at, what == "assigned", owned))
    return out


def owned(worker: Worker) -> Move | None:
    """The worker's current assignment (dated by its last change), or None (none yet, or all
    revoked). Its lines add and remove partitions: with eager rebalancing (aiokafka) a worker
    revokes all and is assigned all it keeps; with cooperative rebalancing (confluent-kafka) only
    the partitions that move are revoked, lost or assigned."""
    now: frozenset[int] = frozenset()
    at = 0
    for m in moves(worker):
        now = now | m.partitions if m.assigned else now - m.partitions
        at = m.at_ms
    return Move(at, True, now) if now else None


class Settled:
    """Asked of a group's workers: true once every one owns partitions, together all of them,
    each once; from then on, true while their assignments stay the ones it first saw."""

    def __init__(self, partitions: int):
        self.partitions = partitions
        #: each worker's assignment, once settled
        self.owners: list[Move] = []

    def __call__(self, workers: list[Worker]) -> bool:
        now = [owned(w) for w in workers]
        if self.owners:
            return now == self.owners
        moves = [m for m in now if m is not None]
        every = sorted(p for m in moves for p in m.partitions)
        if len(moves) < len(workers) or every != list(range(self.partitions)):
            return False
        self.owners = moves
        return True


# ------------------------------------------------------------------------- throughput --


async def scaled(run: Run, src: str, workers: int) -> dict[str, Any]:
    """bench/throughput.py's measurement with ``workers`` processes, and each one's share."""
    check = Settled(run.args.partitions)
    t = await throughput(run, "streamer", src, workers=workers, settled=check, tag=f"-x{workers}")
    eps, seconds = t["events_per_second"], t["seconds"]
    cpu = t["cpu_us_per_event"]
    t["cpu_cores_busy"] = {k: round(v * eps / 1e6, 2) for k, v in cpu.items()}
    if workers == 1:
        t["by_worker"] = [
            {
                "partitions": list(range(run.args.partitions)),
                "events_per_second": eps,
                "cpu_us_per_event": cpu.get("worker"),
            }
        ]
        return t
    by_partition = t.pop("events_by_partition")
    t["by_worker"] = []
    for move, cpu_s in zip(check.owners, t.pop("worker_cpu_seconds"), strict=False):
        n = sum(by_partition.get(p, 0) for p in move.partitions)
        t["by_worker"].append(
            {
                "partitions": sorted(move.partitions),
                "events_per_second": round(n / seconds, 1),
                "cpu_us_per_event": round(cpu_s / n * 1e6, 1) if n else None,
            }
        )
    t["sum_of_workers_events_per_second"] = round(
        sum(w["events_per_second"] for w in t["by_worker"]), 1
    )
    return t


# --------------------------------------------------------------------------- failover --


class Timeline(Reader):
    """Also keeps, per source partition and in the order sent, every prediction's Kafka timestamp
    and how far behind its event it was (both in ms)."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(bootstrap, topic)
        self.sent: dict[int, array[int]] = defaultdict(lambda: array("q"))
        self.behind: dict[int, array[int]] = defaultdict(lambda: array("q"))

    def observe(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for r in records:
            doc = orjson.loads(r.value or b"{}")
            p = doc["partition"]
            self.sent[p].append(r.timestamp)
            self.behind[p].append(r.timestamp - int(doc["ds"]) // 1_000_000)

    def marks(self) -> dict[int, int]:
        return {p: len(ts) for p, ts in self.sent.items()}

    def first_from(self, p: int, start: int, at_ms: int) -> int | None:
        """Index of the first prediction of partition ``p`` from ``start`` on stamped at or
        after ``at_ms``."""
        ts = self.sent[p]
        return next((i for i in range(start, len(ts)) if ts[i] >= at_ms), None)

    def caught_up_from(self, p: int, start: int) -> int | None:
        """Index of the first prediction of ``p`` from ``start`` on less than BEHIND_MS behind."""
        lag = self.behind[p]
        return next((i for i in range(start, len(lag)) if lag[i] <= BEHIND_MS), None)

    def longest_pause_ms(self, p: int, start: int, end_ms: int) -> int:
        """The longest time between two predictions of ``p`` from index ``start`` (less one) to
        the first stamped after ``end_ms``."""
        ts, longest = self.sent[p], 0
        for i in range(max(1, start), len(ts)):
            longest = max(longest, ts[i] - ts[i - 1])
            if ts[i] > end_ms:
                break
        return longest


@dataclass
class Group:
    """The failover part's workers, in the order they started, and its predictions."""

    run: Run
    ns: str
    src: str
    out: str
    timeline: Timeline
    live: list[Worker] = field(default_factory=list)
    gone: list[Worker] = field(default_factory=list)

    def start(self) -> Worker:
        n = len(self.live) + len(self.gone)
        w = self.run.start(
            "streamer", self.ns, self.src, self.out, f"{self.ns}-w{n}", defaults=True
        )
        self.live.append(w)
        return w

    def check(self) -> None:
        for w in self.live:
            if w.proc.poll() is not None:
                raise RuntimeError(f"a worker exited ({w.proc.returncode}):\n{w.tail()}")

    async def steady(self) -> None:
        """Wait until the live workers own all partitions between them, every partition's latest
        prediction is from its owner and less than BEHIND_MS behind, and for SETTLE_S more."""
        partitions = self.run.args.partitions
        deadline = time.monotonic() + HANDOVER_S
        check = Settled(partitions)
        while True:
            self.check()
            now = [owned(w) for w in self.live]
            if check(self.live):
                ts, lag = self.timeline.sent, self.timeline.behind
                ok = all(
                    p in ts and ts[p][-1] >= m.at_ms and lag[p][-1] <= BEHIND_MS
                    for m in now
                    if m is not None
                    for p in m.partitions
                )
                if ok:
                    await asyncio.sleep(SETTLE_S)
                    self.check()
                    if check(self.live):
                        return
                check = Settled(partitions)
            if time.monotonic() > deadline:
                owners = {w.log.stem: owned(w) for w in self.live}
                raise RuntimeError(
                    f"the group did not settle in {HANDOVER_S:.0f} s; assignments logged: {owners}"
                )
            await asyncio.sleep(0.05)

    async def handover(
        self,
        event_ms: int,
        new_owner: Worker,
        moved: frozenset[int] | None,
        gone: Worker | None = None,
    ) -> dict[str, Any]:
        """Measure the handover that began at ``event_ms``: to ``new_owner``, of ``moved`` (or, for
        a join, of what the newcomer is assigned); with ``gone``, also wait for it to exit."""
        tl, marks = self.timeline, self.timeline.marks()
        joining = moved is None
        first: dict[int, int] = {}
        caught: dict[int, int] = {}
        assigned: Move | None = None
        exited_ms: int | None = None
        deadline = time.monotonic() + HANDOVER_S
        while True:
            self.check()
            if gone is not None and exited_ms is None and gone.proc.poll() is not None:
                exited_ms = int(time.time() * 1000)
            if assigned is None:
                assigned = next(
                    (
                        m
                        for m in moves(new_owner)
                        if m.assigned
                        and m.at_ms >= event_ms
                        and (moved is None or moved <= m.partitions)
                    ),
                    None,
                )
                if assigned is not None and moved is None:
                    moved = assigned.partitions
            if assigned is not None and moved is not None:
                for p in moved:
                    if p not in first:
                        i = tl.first_from(p, marks.get(p, 0), assigned.at_ms)
                        if i is not None:
                            first[p] = i
                    if p in first and p not in caught:
                        j = tl.caught_up_from(p, first[p])
                        if j is not None:
                            caught[p] = j
                if len(caught) == len(moved) and (gone is None or exited_ms is not None):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no handover in {HANDOVER_S:.0f} s: assigned {assigned}, first predictions "
                    f"on {sorted(first)}, caught up on {sorted(caught)} of {sorted(moved or ())}"
                )
            await asyncio.sleep(0.05)

        def since(ms: int) -> float:
            return round((ms - event_ms) / 1000, 3)

        firsts = {p: since(tl.sent[p][i]) for p, i in sorted(first.items())}
        done_ms = max(tl.sent[p][i] for p, i in caught.items())
        kept = sorted(set(range(self.run.args.partitions)) - moved)
        pause = max((tl.longest_pause_ms(p, marks.get(p, 0), done_ms) for p in kept), default=0)
        result: dict[str, Any] = {
            "moved_partitions": sorted(moved),
            "assigned_s": since(assigned.at_ms),
            "first_prediction_s": min(firsts.values()),
            "all_moved_served_s": max(firsts.values()),
            "caught_up_s": since(done_ms),
            "kept_partitions_longest_pause_s": round(pause / 1000, 3),
            "first_prediction_by_partition_s": firsts,
        }
        if exited_ms is not None:
            result["exited_s"] = since(exited_ms)
        if joining:  # when the new process asked to join: its start-up time
            asked = next((at for at, m in log_lines(new_owner) if m.startswith(_JOINING)), None)
            if asked is not None:
                result["join_requested_s"] = since(asked)
        return result

    async def leave(self, sig: signal.Signals) -> dict[str, Any]:
        """The oldest worker gets ``sig``; the other takes its partitions over."""
        victim, survivor = self.live[0], self.live[1]
        had = owned(victim)
        assert had is not None  # the group is steady
        self.live.remove(victim)
        self.gone.append(victim)
        event_ms = int(time.time() * 1000)
        victim.proc.send_signal(sig)
        waited = victim if sig != signal.SIGKILL else None  # (a killed one has no say)
        return await self.handover(event_ms, survivor, had.partitions, gone=waited)

    async def join(self) -> dict[str, Any]:
        """A new worker starts; timed from its process's start."""
        event_ms = int(time.time() * 1000)
        return await self.handover(event_ms, self.start(), None)


async def failover(run: Run) -> dict[str, Any]:
    """Kill, leave and join, ``--repeats`` times, under a steady offered load."""
    args = run.args
    ns = f"bench-failover-{run.run_id}"
    src, out = f"{ns}.in", f"{ns}.out"
    await create_topics(run.bootstrap, [src, out, f"{ns}.dlq"], args.partitions)
    timeline = Timeline(run.bootstrap, out)
    await timeline.start()
    group = Group(run, ns, src, out, timeline)
    producer = await new_producer(run.bootstrap)
    stop = asyncio.Event()
    offered = asyncio.create_task(
        offer(producer, src, args.rate, args.entities, random.Random(2), lambda _: stop.is_set())
    )
    runs: dict[str, list[dict[str, Any]]] = {"kill": [], "term": [], "join": []}
    doc: dict[str, Any] = {"offered_per_second": args.rate}
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("kill", lambda: group.leave(signal.SIGKILL)),
        ("join", group.join),
        ("term", lambda: group.leave(signal.SIGTERM)),
        ("join", group.join),
    ]
    try:
        group.start()
        group.start()
        await group.steady()
        for r in range(args.repeats):
            for what, step in steps:
                print(f"failover {r + 1}/{args.repeats}: {what}", file=sys.stderr)
                runs[what].append(await step())
                print(f"  {runs[what][-1]}", file=sys.stderr)
                await group.steady()
    except RuntimeError as exc:  # reported with what was measured before
        print(f"  failover stopped: {exc}", file=sys.stderr)
        doc["error"] = str(exc).splitlines()[0]
    finally:
        stop_all(group.live + group.gone)
        stop.set()
        sent, achieved = await offered
        await producer.stop()
        await timeline.stop()
    doc["produced_per_second"] = round(achieved, 1)
    doc["events"] = sent
    for what, results in runs.items():
        doc[what] = {"summary": summary(results), "runs": results}
    return doc


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [
        "join_requested_s",
        "assigned_s",
        "first_prediction_s",
        "all_moved_served_s",
        "caught_up_s",
        "kept_partitions_longest_pause_s",
    ]
    out: dict[str, Any] = {}
    for k in keys:
        values = [r[k] for r in results if k in r]
        if values:
            out[k] = {
                "min": min(values),
                "median": round(statistics.median(values), 3),
                "max": max(values),
            }
    return out


# ---------------------------------------------------------------------------- the run --


async def reachable(args: argparse.Namespace) -> None:
    """Fail in one line when the given Kafka or Redis does not answer."""
    admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap, request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), 20)
    except Exception as exc:
        fail(f"cannot reach Kafka at {args.bootstrap}: {exc or type(exc).__name__}")
    finally:
        with suppress(Exception):
            await admin.close()
    r = aioredis.Redis.from_url(args.redis_url, socket_connect_timeout=5)
    try:
        await r.ping()
    except Exception as exc:
        fail(f"cannot reach Redis at {args.redis_url}: {exc}")
    finally:
        await r.aclose()


def note() -> str:
    cores = os.cpu_count()
    return (
        f"This machine has {cores} cores, shared by Kafka, Redis, the workers and this "
        "benchmark's own reader (and whatever else runs: see machine.load_average_at_start). "
        "More workers cannot multiply the throughput here: cpu_cores_busy shows what the "
        "pipeline already takes with one. On a machine with a core per worker and the services "
        "elsewhere, the per-worker rates are the better guide."
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    load = os.getloadavg()
    await reachable(args)
    s = worker_settings(args.worker_env)
    doc: dict[str, Any] = {
        "benchmark": "scale",
        "config": {
            **config(args),
            "workers": args.workers,
            "worker_env": args.worker_env,
            "failover": {
                "offered_per_second": args.rate,
                "repeats": args.repeats,
                "settings": "streamer's defaults (and --worker-env)",
                "session_timeout_s": await session_timeout_s(
                    s.model_copy(
                        update={
                            "kafka": s.kafka.model_copy(
                                update={"bootstrap_servers": args.bootstrap}
                            )
                        }
                    )
                ),
                "batch_max_size": s.batch.max_size,
                "batch_max_wait_s": s.batch.max_wait_s,
                "caught_up_when_behind_ms": BEHIND_MS,
            },
        },
        "throughput": {},
    }
    with tempfile.TemporaryDirectory(prefix="streamer-scale-") as tmp_name:
        run = new_run(args, Path(tmp_name))
        run.worker_env, run.loglevel = dict(args.worker_env), "info"
        if args.workers:
            src = await backlog(run)
            for n in args.workers:
                print(f"throughput: {n} worker(s)", file=sys.stderr)
                doc["throughput"][f"workers_{n}"] = t = await scaled(run, src, n)
                print(f"  {t}", file=sys.stderr)
            one = doc["throughput"].get("workers_1", {}).get("events_per_second")
            for n in args.workers:
                eps = doc["throughput"][f"workers_{n}"]["events_per_second"]
                if one and n > 1:
                    doc["throughput"][f"speedup_{n}_over_1"] = round(eps / one, 2)
            doc["throughput"]["note"] = note()
        if args.repeats:
            doc["failover"] = await failover(run)
    doc["machine"] = {**machine(), "load_average_at_start": [round(x, 2) for x in load]}
    return doc


def table(doc: dict[str, Any]) -> str:
    rows = ["workers  events/s  per worker          worker µs/ev  kafka µs/ev  redis µs/ev"]
    for key, t in doc["throughput"].items():
        if not key.startswith("workers_"):
            continue
        cpu = t["cpu_us_per_event"]
        each = " + ".join(f"{w['events_per_second']:,.0f}" for w in t["by_worker"])
        rows.append(
            f"{key[8:]:>7} {t['events_per_second']:>9,.0f}  {each:<18} {cpu.get('worker', 0):>13}"
            f" {cpu.get('kafka', 0):>12} {cpu.get('redis', 0):>12}"
        )
    f = doc.get("failover", {})
    for what in ("kill", "term", "join"):
        s = f.get(what, {}).get("summary", {})
        if s:
            a, b = s["first_prediction_s"], s["all_moved_served_s"]
            rows.append(
                f"{what}: first prediction {a['min']}/{a['median']}/{a['max']} s, all moved "
                f"partitions {b['min']}/{b['median']}/{b['max']} s (min/median/max)"
            )
    return "\n".join(rows)


# -------------------------------------------------------------------------------- CLI --


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see --help)", 2)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"scale.py: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def known_settings() -> set[str]:
    """The environment variables of streamer's settings: ``STREAMER_X``, ``STREAMER_G__X``."""
    names = set()
    for name, f in Settings.model_fields.items():
        group = f.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names |= {f"STREAMER_{name}__{sub}".upper() for sub in group.model_fields}
        else:
            names.add(f"STREAMER_{name}".upper())
    return names


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """This process's ``STREAMER_*`` environment replaced by ``env``'s, for a while."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("STREAMER_")}
    for k in saved:
        del os.environ[k]
    os.environ.update({k: v for k, v in env.items() if k.startswith("STREAMER_")})
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith("STREAMER_")]:
            del os.environ[k]
        os.environ.update(saved)


def worker_settings(env: dict[str, str]) -> Settings:
    """streamer's default settings with ``env`` over them, as a worker started with it sees them."""
    with environment(env):
        return Settings()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _Parser(description=__doc__.splitlines()[0])
    common_options(ap, budget_s=180.0)
    ap.add_argument("--workers", default="1,2", help="worker counts for the throughput part")
    ap.add_argument("--rate", type=float, default=2000.0, help="failover: offered events/s")
    ap.add_argument("--repeats", type=int, default=3, help="failover: rounds (0: none)")
    ap.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more environment for every worker (repeat it), over the benchmark's settings",
    )
    args = ap.parse_args(argv)
    for name in ("events", "entities", "batch", "torch_threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("budget_s", "rate"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("batch_wait_s", "cache_mb"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must not be negative")
    if args.repeats < 0:
        ap.error("--repeats must not be negative")
    if args.partitions < 2:
        ap.error("--partitions must be at least 2 (two workers share them)")
    if bool(args.bootstrap) != bool(args.redis_url):
        ap.error("give both --bootstrap and --redis-url (existing services), or neither")
    try:
        args.workers = [int(n) for n in args.workers.split(",") if n.strip()]
    except ValueError:
        ap.error(f"--workers takes counts separated by commas, not {args.workers!r}")
    if any(not 1 <= n <= args.partitions for n in args.workers):
        ap.error(f"--workers: each count from 1 to --partitions ({args.partitions})")
    env, known = {}, known_settings()
    for pair in args.worker_env:
        key, eq, value = pair.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            ap.error(f"--worker-env takes KEY=VALUE, not {pair!r}")
        if key.upper().startswith("STREAMER_") and key.upper() not in known:
            ap.error(f"--worker-env: {key} is not one of streamer's settings")
        env[key] = value
    try:
        worker_settings(env)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        ap.error(f"--worker-env: {where + ': ' if where else ''}{err['msg']}")
    args.worker_env = env
    return args


def cli(argv: list[str] | None = None) -> int:
    # Fresh topics have no leader for a moment: the clients retry and say so, noisily (at ERROR).
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    args = parse(argv)
    t = time.monotonic()
    try:
        with bench_services(args):
            doc = asyncio.run(main(args))
    except subprocess.CalledProcessError:
        fail("deploy/local/services.sh could not start Kafka and Redis (see above)")
    except RuntimeError as exc:  # a worker that exited, or a service that went away
        fail(str(exc))
    doc["seconds"] = round(time.monotonic() - t, 1)
    text = save(doc, "scale")
    print(table(doc), file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
