"""The README's Faust example: a user's own Faust app (examples/faust_enrich.py) that enriches raw
readings in one agent and predicts with streamer in another, run as a real Faust worker."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest

from streamer.kafka import ensure_topics
from streamer.train.data import event_rows
from tests.conftest import make_panel
from tests.integration.test_faults import verify
from tests.integration.test_worker import settings_for
from tests.integration.workers import TopicReader, WorkerProcess, produce, worker_env

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).parents[2] / "examples" / "faust_enrich.py"


async def test_a_users_faust_app_enriches_then_predicts_and_alerts(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    df = make_panel(80, 10, 30, seed=41)
    settings = settings_for(services, ns)
    readings, alerts = f"{ns}.events.readings", f"{ns}.events.alerts"
    await ensure_topics(settings, [settings.topics.events, readings, alerts])
    msgs = [
        (
            str(ev["unique_id"]).encode(),
            orjson.dumps({"meter": ev["unique_id"], "at": ev["ds"], "wh": ev["y"] * 1000.0}),
        )
        for ev in event_rows(df)
    ]
    await produce(services["bootstrap"], readings, msgs)
    threshold = float(df.y.median())  # about half the forecasts raise an alert
    env = worker_env(services, ns, model_dir, ALERT_KWH=str(threshold))
    command = [sys.executable, str(EXAMPLE), "worker", "-l", "info", "--without-web"]
    w = WorkerProcess(env, tmp_path / "app.log", command)
    try:
        async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
            await out.read_until(len(df), timeout=180, proc=w)
            await out.drain(quiet_s=2)
        async with TopicReader(services["bootstrap"], alerts) as got:
            await got.drain(quiet_s=2)
    finally:
        assert w.stop() == 0, w.tail()
    assert await verify(services, ns, model_dir, df, out.records, exactly_once=False) == 0
    high = {
        (p["unique_id"], p["ds"])
        for p in map(orjson.loads, (r.value for r in out.records))
        if p["forecast"][0] > threshold
    }
    sent = {(a["meter"], a["at"]) for a in map(orjson.loads, (r.value for r in got.records))}
    assert high and sent == high, f"{len(sent)} alerts for {len(high)} high forecasts"
