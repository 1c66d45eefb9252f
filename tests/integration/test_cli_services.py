"""The command line against the real services: state get, replay, tail."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import numpy as np
import pytest

from streamer.model.artifact import load_artifact
from streamer.serve.predictor import Predictor
from streamer.state import RedisStateStore
from tests.conftest import make_panel
from tests.integration.workers import WorkerProcess, produce, worker_env
from tests.reference import expected_by_entity, synthetic_events
from tests.unit.test_cli import run


def cli_env(services: dict[str, str], ns: str) -> dict[str, str]:
    return {
        "STREAMER_MODEL_NAME": ns,
        "STREAMER_REDIS__URL": services["redis_url"],
        "STREAMER_REDIS__CLUSTER": services.get("redis_cluster", "0"),
        "STREAMER_KAFKA__BOOTSTRAP_SERVERS": services["bootstrap"],
        "STREAMER_TOPICS__EVENTS": f"{ns}.events",
        "STREAMER_TOPICS__PREDICTIONS": f"{ns}.predictions",
        "STREAMER_TOPICS__DEAD_LETTER": f"{ns}.dlq",
    }


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["plain", "seasonal"])
async def test_state_get_decodes_what_the_predictor_saved(
    services: dict[str, str], ns: str, model_dir: Path, seasonal_model_dir: Path, kind: str
) -> None:
    art = load_artifact(seasonal_model_dir if kind == "seasonal" else model_dir)
    df = make_panel(2, 12, 12, seed=9)
    pred = Predictor(art.model, art.version, RedisStateStore.from_url(services["redis_url"], ns))
    await pred.step_many(synthetic_events(df))
    await pred.aclose()
    exp = expected_by_entity(art.model, df)["e0001"]

    r = run("state", "get", "e0001", "--json", env=cli_env(services, ns))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (
        d["key"] == f"streamer:{ns}:e0001" and d["step"] == 12 and d["model_version"] == art.version
    )
    assert d["layers"] == 2 and d["hidden_size"] == 16 and d["dtype"] == "float32"
    np.testing.assert_allclose(d["h"], exp.h, atol=1e-5)
    np.testing.assert_allclose(d["c"], exp.c, atol=1e-5)
    if kind == "seasonal":  # the level and seasonal indices, as the offline pass leaves them
        co = d["components"]
        assert [co["observations"], co["level"], *co["seasonal"]] == exp.comp.tolist()
        assert len(co["seasonal"]) == 4
    else:
        assert d["components"] is None

    r = run("state", "get", "e0001", env=cli_env(services, ns))
    assert r.returncode == 0, r.stderr
    for word in ("model_version", art.version, "step", "12", "offset", "h[1]", "c[0]", "norm"):
        assert word in r.stdout
    assert ("seasonal over 4 steps" in r.stdout) == (kind == "seasonal"), r.stdout

    r = run("state", "get", "nobody", env=cli_env(services, ns))
    assert (
        r.returncode == 1
        and r.stderr.strip()
        == f"streamer: error: no state for entity 'nobody' (key streamer:{ns}:nobody)"
    )
    r = run(
        "state", "get", "e0001", "--redis-url", "redis://127.0.0.1:1/0", env=cli_env(services, ns)
    )
    assert (
        r.returncode == 1
        and r.stderr.strip() == "streamer: error: cannot reach Redis at redis://127.0.0.1:1/0"
    )


@pytest.mark.integration
async def test_replay_then_tail_shows_the_worker_predictions(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    df = make_panel(5, 8, 8, seed=2)
    data = tmp_path / "panel.csv"
    df.to_csv(data, index=False)
    env = cli_env(services, ns)
    r = run("replay", str(data), "--rate", "200", env=env)
    assert r.returncode == 0, r.stderr
    assert f"sent 40 events from {data} to {ns}.events" in r.stderr

    worker = WorkerProcess({**worker_env(services, ns, model_dir)}, tmp_path / "w.log")
    try:
        r = run(
            "tail",
            "--from-beginning",
            "--json",
            "--max",
            "40",
            "--timeout",
            "60",
            env=env,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        lines = [json.loads(x) for x in r.stdout.splitlines()]
        assert len(lines) == 40
        assert sorted({p["unique_id"] for p in lines}) == [f"e{i:04d}" for i in range(5)]
        r = run(
            "tail", "--from-beginning", "--entity", "e0003", "--timeout", "3", env=env, timeout=120
        )
        assert r.returncode == 0, r.stderr
        shown = r.stdout.splitlines()
        assert len(shown) == 8 and all("e0003" in line and "forecast [" in line for line in shown)
        r = run(
            "tail",
            "--from-beginning",
            "--entity",
            "e000[12]",
            "--timeout",
            "3",
            env=env,
            timeout=120,
        )
        assert sorted({line.split()[0] for line in r.stdout.splitlines()}) == ["e0001", "e0002"]

        # A bad event: tail --topic dlq shows it with its reason.
        await produce(services["bootstrap"], f"{ns}.events", [(b"e0004", b"not json")])
        r = run(
            "tail", "--topic", "dlq", "--from-beginning", "--max", "1", "--timeout", "60", env=env
        )
        assert r.returncode == 0, r.stderr
        assert "e0004" in r.stdout and "invalid_json" in r.stdout and f"{ns}.events/" in r.stdout
        assert r.stderr.startswith(f"reading {ns}.dlq at {services['bootstrap']}"), r.stderr

        # A topic by its name, in Nixtla's long format: a row per step ahead.
        horizon = load_artifact(model_dir).spec.horizon
        r = run(
            "tail",
            "--topic",
            f"{ns}.predictions",
            "--format",
            "long",
            "--from-beginning",
            "--entity",
            "e0003",
            "--max",
            "2",
            "--timeout",
            "30",
            env=env,
        )
        assert r.returncode == 0, r.stderr
        rows = r.stdout.splitlines()
        header = "unique_id,ds,cutoff,h,streamer," + ",".join(
            f"streamer-{side}-{v}" for v in (80, 95) for side in ("lo", "hi")
        )
        assert rows[0] == header and len(rows) == 1 + 2 * horizon, rows
        first = rows[1].split(",")
        assert first[0] == "e0003" and first[3] == "1" and first[2] == str(df["ds"].iloc[0])[:10]
        # the model's (made-up) interval offsets: lows below the forecast, highs above
        value, lo80, hi80, lo95, hi95 = map(float, first[4:])
        assert lo95 < lo80 < value < hi80 < hi95, rows[1]
    finally:
        assert worker.stop(signal.SIGTERM) == 0, worker.tail()


@pytest.mark.integration
def test_a_busy_metrics_port_is_one_line(
    services: dict[str, str], ns: str, model_dir: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **worker_env(services, ns, model_dir),
            "STREAMER_METRICS__HOST": "127.0.0.1",
            "STREAMER_METRICS__PORT": str(port),
        }
        r = run("worker", env=env, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"streamer: error: cannot serve metrics on 127.0.0.1:{port} (Address already in use); "
        "set STREAMER_METRICS__PORT to a free port, or 0 for any"
    )
