"""Scaling out: several worker processes in one group over a topic of twelve partitions.

Events are produced at a steady rate the whole time (as in production, not a backlog drained at
once) while workers join, leave cleanly (SIGTERM) and crash (kill -9). What is proven:

- The guarantees hold across every move of a partition: each event has a prediction (at least
  once; a duplicate carries the same values and event identity), each equals the offline
  ``nn.LSTM`` forecast, and each entity's final state in Redis equals the offline state.
- Per-entity order: on the predictions topic, the first prediction of each of an entity's events
  comes in the order of its events (steps 1, 2, 3, ... and increasing offsets); what a crash may
  add is a repetition of predictions already sent, never one out of order.
- A new owner predicts at once from Redis: its first prediction for a partition it took over
  continues an entity that another worker stepped (step > 1) and equals the offline forecast, and
  comes soon after the partition was assigned to it. There is no state to restore.
- The time from a worker's death to the first prediction on each of its partitions by another
  worker is measured (printed under ``pytest -s``), for kill -9 and for a clean leave, and
  bounded by the Kafka session timeout: a crash is noticed when the dead member's session
  expires, a clean leave at once.

Which worker owns which partition, and since when, comes from the workers' own log lines
(``partitions assigned: [...]``, ``partitions revoked: [...]``, with millisecond timestamps);
predictions carry no worker identity, so a prediction is another worker's when the record was
created (its CreateTime) after that worker logged the partition's assignment.
"""

from __future__ import annotations

import asyncio
import math
import re
import signal
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from streamer.kafka import ensure_topics, replay_events
from streamer.model.artifact import load_artifact
from streamer.schemas import Prediction
from streamer.settings import Settings
from streamer.train.data import event_rows
from tests.conftest import make_panel
from tests.integration.test_faults import verify
from tests.integration.test_worker import settings_for as worker_settings
from tests.integration.workers import TopicReader, WorkerProcess, worker_env
from tests.reference import check_predictions, expected_by_entity

pytestmark = pytest.mark.integration

PARTITIONS = 12
ALL = frozenset(range(PARTITIONS))

_OWNERSHIP = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[\d+\] \[INFO\] "
    r"partitions (assigned|revoked): \[([\d, ]*)\]",
    re.MULTILINE,
)


def settings_for(services: dict[str, str], ns: str) -> Settings:
    return worker_settings(services, ns, partitions=PARTITIONS)


def env_for(services: dict[str, str], ns: str, model_dir: Path, session_s: float) -> dict[str, str]:
    return worker_env(
        services,
        ns,
        model_dir,
        STREAMER_TOPICS__PARTITIONS=str(PARTITIONS),
        STREAMER_KAFKA__SESSION_TIMEOUT_S=str(session_s),
    )


# --- who owns what, from the workers' logs -------------------------------------------------------


def ownership_log(w: WorkerProcess) -> list[tuple[float, str, frozenset[int]]]:
    """``(wall time, "assigned" | "revoked", partitions)`` for each ownership line of the log."""
    out = []
    for stamp, what, parts in _OWNERSHIP.findall(w.log.read_text(errors="replace")):
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local, as time.time()
        out.append((at, what, frozenset(int(p) for p in parts.split(",") if p.strip())))
    return out


def owned(w: WorkerProcess) -> frozenset[int]:
    """The partitions a live worker owns now, as far as its log tells."""
    now: frozenset[int] = frozenset()
    for _, what, parts in ownership_log(w):
        now = now | parts if what == "assigned" else now - parts
    return now


def assigned_since(workers: Sequence[WorkerProcess], since: float) -> dict[int, float]:
    """Partition -> the first time after ``since`` one of ``workers`` logged it assigned."""
    taken: dict[int, float] = {}
    for w in workers:
        for at, what, parts in ownership_log(w):
            if what == "assigned" and at > since:
                for p in parts:
                    taken[p] = min(taken.get(p, at), at)
    return taken


def alive(workers: Sequence[WorkerProcess]) -> None:
    for w in workers:
        if w.proc.poll() is not None:
            raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.tail()}")


async def settled(
    workers: Sequence[WorkerProcess], timeout: float = 90
) -> dict[WorkerProcess, frozenset[int]]:
    """Wait until each partition is owned by exactly one of ``workers``, and each owns some."""
    deadline = time.monotonic() + timeout
    while True:
        alive(workers)
        now = {w: owned(w) for w in workers}
        sizes = [len(parts) for parts in now.values()]
        if all(sizes) and sum(sizes) == PARTITIONS and frozenset().union(*now.values()) == ALL:
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"the partitions never settled: {list(now.values())}")
        await asyncio.sleep(0.2)


def stopped_stats(w: WorkerProcess) -> tuple[int, int]:
    """``(events, predictions)`` of the line a cleanly stopped worker logs last."""
    m = re.search(r"stopped after \d+ batches, (\d+) events, (\d+) predictions", w.log.read_text())
    assert m is not None, w.tail()
    return int(m[1]), int(m[2])


def stop_all(workers: Sequence[WorkerProcess]) -> None:
    """No test leaves a worker behind, whatever failed."""
    for w in workers:
        if w.proc.poll() is None:
            w.kill()


# --- the stream in, the predictions out ----------------------------------------------------------


class Stream:
    """Events of ``df`` produced in time order at ``rate`` per second until :meth:`finish`."""

    def __init__(self, settings: Settings, df: pd.DataFrame, rate: float):
        self.df = df
        self.rate = rate
        self._stop = asyncio.Event()
        self.sent = 0
        self.task = asyncio.create_task(
            replay_events(settings, self._rows(), rate=rate, on_sent=self._on_sent)
        )

    def _rows(self) -> Iterator[dict[str, object]]:
        for row in event_rows(self.df):
            if self._stop.is_set():
                return
            yield row

    def _on_sent(self, n: int) -> None:
        self.sent = n

    def running(self) -> None:
        if self.task.done():
            self.task.result()  # raises what stopped it
            raise AssertionError("the stream ended before the scenario did: make it longer")

    async def finish(self) -> pd.DataFrame:
        """Stop producing; the events sent, as a frame in the order they were sent."""
        self._stop.set()
        n = await self.task
        return self.df.sort_values(["ds", "unique_id"], kind="stable").iloc[:n]

    async def abort(self) -> None:
        self._stop.set()
        if not self.task.done():
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@dataclass
class Output:
    """The predictions topic as it fills: each record's creation time and prediction."""

    reader: TopicReader
    seen: list[tuple[float, Prediction]] = field(default_factory=list)
    events: set[tuple[int, int]] = field(default_factory=set)

    async def poll(self) -> None:
        got = await self.reader.consumer.getmany(timeout_ms=200)
        for recs in got.values():
            self.reader.records.extend(recs)
            for r in recs:
                p = Prediction.from_json(r.value)
                self.seen.append((r.timestamp / 1000, p))
                self.events.add((p.partition, p.offset))

    async def until(
        self,
        count: int,
        workers: Sequence[WorkerProcess],
        timeout: float,
        stream: Stream | None = None,
    ) -> None:
        """Read until ``count`` distinct events have a prediction."""
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            alive(workers)
            if stream is not None:
                stream.running()
            if time.monotonic() > deadline:
                sent = f" of {stream.sent} sent" if stream is not None else ""
                raise AssertionError(
                    f"{len(self.events)} events predicted{sent}, waited for {count}"
                )
            await self.poll()

    async def complete(
        self, n: int, workers: Sequence[WorkerProcess], settings: Settings, timeout: float = 60
    ) -> None:
        """Read until each of the ``n`` events sent has a prediction; fail naming those without."""
        try:
            await self.until(n, workers, timeout)
        except AssertionError:
            alive(workers)
            bootstrap, topic = settings.kafka.bootstrap_servers, settings.topics.events
            async with TopicReader(bootstrap, topic) as events:
                await events.read_until(n, timeout=30)
            missing = sorted({(r.partition, r.offset) for r in events.records} - self.events)
            raise AssertionError(
                f"{len(missing)} of {n} events never got a prediction (partition, offset): "
                f"{missing[:24]}"
            ) from None

    async def steady(
        self, stream: Stream, workers: Sequence[WorkerProcess], seconds: float, timeout: float = 90
    ) -> None:
        """Until ``workers`` keep up with the stream (at most a second behind what was sent when
        this was called), then for ``seconds`` more of it."""
        await self.until(stream.sent - int(stream.rate), workers, timeout, stream)
        await self.until(stream.sent + int(stream.rate * (seconds - 1)), workers, timeout, stream)

    async def drain(self, quiet_s: float = 2.0) -> None:
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            before = len(self.seen)
            await self.poll()
            if len(self.seen) > before:
                last = time.monotonic()


def check_entity_order(records: list) -> int:  # type: ignore[type-arg]
    """Each entity's predictions sit in one partition of the predictions topic, and there the
    first prediction of each of its events comes in event order: steps 1, 2, 3, ... at increasing
    offsets. Anything else is a repetition of a prediction already sent (at least once); returns
    how many there were."""
    partition: dict[str, int] = {}
    step: dict[str, int] = {}
    offset: dict[str, int] = {}
    repeated = 0
    for r in records:
        p = Prediction.from_json(r.value)
        uid = p.unique_id
        assert partition.setdefault(uid, r.partition) == r.partition, f"{uid} in two partitions"
        last = step.get(uid, 0)
        if p.step <= last:
            repeated += 1
            continue
        assert p.step == last + 1, f"{uid}: step {p.step} came before step {last + 1}"
        assert p.offset > offset.get(uid, -1), f"{uid}: offset {p.offset} after {offset[uid]}"
        step[uid], offset[uid] = p.step, p.offset
    return repeated


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["aiokafka", "confluent"])
async def test_workers_join_leave_and_crash_while_events_stream_in(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path, client: str
) -> None:
    """On both Kafka clients: aiokafka's eager rebalancing, confluent-kafka's cooperative one."""
    settings = settings_for(services, ns)
    await ensure_topics(settings)
    env = {**env_for(services, ns, model_dir, session_s=3), "STREAMER_KAFKA__CLIENT": client}
    df = make_panel(300, 200, 200, seed=31)  # far more than is sent: the stream never runs dry
    workers: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        workers.append(WorkerProcess(env, tmp_path / f"{name}.log"))
        return workers[-1]

    stream: Stream | None = None
    try:
        async with TopicReader(services["bootstrap"], settings.topics.predictions) as reader:
            out = Output(reader)
            a = start("a")
            await a.logged("partitions assigned")
            stream = Stream(settings, df, rate=250)
            await out.steady(stream, [a], seconds=2)
            assert owned(a) == ALL

            b, c = start("b"), start("c")  # two join: partitions move to them
            shares = await settled([a, b, c])
            await out.steady(stream, [a, b, c], seconds=4)

            t = time.monotonic()
            assert await asyncio.to_thread(b.stop, signal.SIGTERM) == 0, b.tail()  # leaves
            left_s = time.monotonic() - t
            after_leave = await settled([a, c])
            await out.steady(stream, [a, c], seconds=3)

            c.kill()  # crashes in the middle of whatever it was doing
            d = start("d")  # and a new worker joins meanwhile
            final = await settled([a, d])
            await out.steady(stream, [a, d], seconds=4)
            stream.running()

            sent = await stream.finish()
            await out.complete(len(sent), [a, d], settings)
            await out.drain()
            for w in (a, d):
                assert await asyncio.to_thread(w.stop) == 0, w.tail()
            records = reader.records
    finally:
        if stream is not None:
            await stream.abort()
        stop_all(workers)

    # The partitions really moved: every worker owned some, and those that left cleanly had
    # predicted for them (the crashed one cannot say).
    assert all(0 < len(parts) < PARTITIONS for parts in shares.values()), shares
    assert all(len(parts) < PARTITIONS for parts in after_leave.values()), after_leave
    assert all(len(parts) < PARTITIONS for parts in final.values()), final
    stats = {w.log.stem: stopped_stats(w) for w in (a, b, d)}
    assert all(events > 0 and predictions > 0 for events, predictions in stats.values()), stats

    dupes = await verify(services, ns, model_dir, sent, records, exactly_once=False)
    repeated = check_entity_order(records)
    assert repeated == dupes
    print(
        f"join/leave/crash: {len(sent)} events of {sent.unique_id.nunique()} entities over "
        f"{PARTITIONS} partitions, {dupes} repeated after the crash; (events, predictions) per "
        f"worker {stats}; clean stop took {left_s:.1f} s"
    )


@dataclass
class Failover:
    how: str
    taken: dict[int, float]  # partition -> seconds from the death to its assignment elsewhere
    first: dict[int, float]  # partition -> seconds from the death to its first prediction there
    predictions: dict[int, Prediction]  # partition -> that first prediction

    def line(self) -> str:
        firsts = sorted(self.first.values())
        lag = [self.first[p] - self.taken[p] for p in self.first]
        return (
            f"failover {self.how}: partitions {sorted(self.first)} first prediction by another "
            f"worker after {max(firsts):.1f} s max, {statistics.median(firsts):.1f} s median "
            f"(assigned after {max(self.taken.values()):.1f} s; first prediction "
            f"{max(lag):.2f} s after the assignment at most)"
        )


async def failover(
    out: Output,
    victim: WorkerProcess,
    survivors: Sequence[WorkerProcess],
    how: str,
    timeout: float,
) -> Failover:
    """End ``victim`` (``kill -9`` or ``SIGTERM``) and wait until another worker has predicted on
    each of its partitions; times are from the signal."""
    parts = owned(victim)
    assert parts, victim.tail()
    start = len(out.seen)
    t0 = time.time()
    if how == "kill -9":
        victim.kill()
        stopping = None
    else:
        stopping = asyncio.create_task(asyncio.to_thread(victim.stop, signal.SIGTERM))
    firsts: dict[int, tuple[float, Prediction]] = {}
    try:
        while True:
            taken = assigned_since(survivors, t0)
            # A record created after a survivor logged the partition assigned is that survivor's:
            # the victim sent its last before it left the group (or died).
            firsts = {}
            for at, p in out.seen[start:]:
                q, best = p.partition, firsts.get(p.partition)
                if q in parts and at >= taken.get(q, math.inf) and (best is None or at < best[0]):
                    firsts[q] = (at, p)
            if firsts.keys() == parts:
                break
            alive(survivors)
            if time.time() - t0 > timeout:
                raise AssertionError(
                    f"{how}: after {timeout} s, partitions {sorted(parts - firsts.keys())} had no "
                    f"prediction from another worker (assigned: {sorted(taken)})"
                )
            await out.poll()
    finally:
        if stopping is not None:
            assert await stopping == 0, victim.tail()
    return Failover(
        how,
        {q: taken[q] - t0 for q in parts},
        {q: at - t0 for q, (at, _) in firsts.items()},
        {q: p for q, (_, p) in firsts.items()},
    )


SESSION_S = 6.0
#: Kafka notices a crashed member when its session expires; the rebalance that follows waits at
#: most the rebalance timeout for the others to rejoin, which aiokafka sets to the session timeout
#: (the runner sets no other, nor a max poll interval that could lengthen it); a few seconds more
#: for the heartbeat that tells the survivors, the fetch and the first batch on this slow machine.
KILL_BOUND_S = 2 * SESSION_S + 5
#: A clean leave tells the coordinator at once: the survivors learn at their next heartbeat (a
#: third of the session), then rejoin. It must not wait for the session to expire.
LEAVE_BOUND_S = SESSION_S
#: From a partition's assignment to the first prediction on it: a fetch and a batch, no restore.
ASSIGNED_TO_PREDICTION_S = 3.0


async def test_failover_time_from_a_workers_death_to_the_first_prediction_elsewhere(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    settings = settings_for(services, ns)
    await ensure_topics(settings)
    env = env_for(services, ns, model_dir, session_s=SESSION_S)
    df = make_panel(480, 200, 200, seed=32)
    workers = [WorkerProcess(env, tmp_path / f"{name}.log") for name in "abc"]
    a, b, c = workers
    stream: Stream | None = None
    try:
        async with TopicReader(services["bootstrap"], settings.topics.predictions) as reader:
            out = Output(reader)
            stream = Stream(settings, df, rate=300)  # every partition gets events all the time
            await settled(workers)
            await out.steady(stream, workers, seconds=2)

            crash = await failover(out, c, [a, b], "kill -9", timeout=KILL_BOUND_S + 10)
            await settled([a, b])
            await out.steady(stream, [a, b], seconds=2)
            stream.running()

            leave = await failover(out, b, [a], "SIGTERM", timeout=KILL_BOUND_S + 10)
            await out.steady(stream, [a], seconds=1)
            stream.running()

            sent = await stream.finish()
            await out.complete(len(sent), [a], settings)
            await out.drain()
            assert await asyncio.to_thread(a.stop) == 0, a.tail()
            records = reader.records
    finally:
        if stream is not None:
            await stream.abort()
        stop_all(workers)

    print(crash.line())
    print(leave.line())
    for f, bound in ((crash, KILL_BOUND_S), (leave, LEAVE_BOUND_S)):
        assert max(f.first.values()) < bound, f.line()
        # The new owner predicts at once from what is in Redis: soon after the assignment, and
        # its first prediction continues an entity another worker stepped, exactly as nn.LSTM
        # over all of that entity's events would.
        assert all(f.first[p] - f.taken[p] < ASSIGNED_TO_PREDICTION_S for p in f.first), f.line()
        assert all(p.step > 1 for p in f.predictions.values()), f.predictions
    expected = expected_by_entity(load_artifact(model_dir).model, sent)
    check_predictions([*crash.predictions.values(), *leave.predictions.values()], expected)
    # A crash is only noticed when the session expires; a clean leave is not waited for.
    assert min(crash.taken.values()) > SESSION_S / 2, crash.line()
    assert max(leave.taken.values()) < min(crash.taken.values()), (leave.line(), crash.line())

    await verify(services, ns, model_dir, sent, records, exactly_once=False)
    check_entity_order(records)
