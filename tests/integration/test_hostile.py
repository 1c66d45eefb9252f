"""Hostile input drawn by hypothesis, mixed into a valid stream through a real worker."""

from __future__ import annotations

import random
import warnings
from collections import Counter
from pathlib import Path

import pytest
from hypothesis.errors import NonInteractiveExampleWarning

from streamer.kafka import ensure_topics
from streamer.train.data import event_rows
from tests.conftest import make_panel
from tests.hostile import REASONS, hostile_message
from tests.integration.test_faults import verify
from tests.integration.test_worker import settings_for
from tests.integration.workers import TopicReader, WorkerProcess, event_message, produce, worker_env

pytestmark = pytest.mark.integration
PANEL = make_panel(100, 10, 30, seed=31)
ENTITIES = sorted(PANEL.unique_id.unique())


def draw_hostile(n: int) -> list[tuple[bytes | None, bytes | None]]:
    """n messages drawn at random by the hostile-input strategy (a fresh draw each run; a failure
    prints them). ``@given`` would rerun a real-services scenario for every shrink step."""
    strategy = hostile_message(ENTITIES, max_bytes=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        return [strategy.example() for _ in range(n)]


@pytest.mark.parametrize("engine", ["streamer", "faust"])
async def test_hostile_input_goes_to_the_dead_letter_topic_and_changes_no_state(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path, engine: str
) -> None:
    hostile = draw_hostile(150)
    try:
        await _scenario(hostile, services, ns, model_dir, tmp_path, engine)
    except AssertionError:
        print("hostile input of the failing run:", hostile)
        raise


async def _scenario(hostile, services, ns, model_dir, tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    df = PANEL
    msgs = [event_message(ev) for ev in event_rows(df)]
    rng = random.Random(3)
    for bad in hostile:  # scattered through the valid stream
        msgs.insert(rng.randrange(len(msgs) + 1), bad)
    settings_ = settings_for(services, ns)
    await ensure_topics(settings_)
    await produce(services["bootstrap"], settings_.topics.events, msgs)
    env = worker_env(
        services, ns, model_dir, STREAMER_TOPICS__MAX_EVENT_BYTES="4096", STREAMER_ENGINE=engine
    )
    w = WorkerProcess(env, tmp_path / "w.log")
    try:
        async with TopicReader(services["bootstrap"], settings_.topics.predictions) as out:
            await out.read_until(len(df), timeout=180, proc=w)
            await out.drain(quiet_s=2)
        async with TopicReader(services["bootstrap"], settings_.topics.dead_letter) as dlq:
            await dlq.read_until(len(hostile), timeout=60, proc=w)
            await dlq.drain(quiet_s=1)
    finally:
        assert w.stop() == 0, w.tail()
    got = Counter((r.key or None, r.value) for r in dlq.records)
    assert got == Counter((k or None, v) for k, v in hostile), (
        "every hostile message, original bytes"
    )
    reasons = Counter(dict(r.headers)["streamer-reason"].decode() for r in dlq.records)
    assert set(reasons) <= REASONS
    assert len(reasons) >= 6, f"the draw should cover many kinds of bad input: {reasons}"
    assert await verify(services, ns, model_dir, df, out.records, exactly_once=False) == 0
