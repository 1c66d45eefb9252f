"""The README's five-command quickstart, as written, on a fresh namespace: its configuration file,
its commands (the worker in the background), its Python example and its redis-cli line."""

from __future__ import annotations

import doctest
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_parts(ns: str) -> tuple[str, list[str], str]:
    """The README's configuration file, quickstart commands and Python example, with the
    quickstart's names (``retail``) replaced by ``ns``."""
    text = re.sub(r"(?<!aus-)\bretail\b", ns, (ROOT / "README.md").read_text())
    toml = re.search(r"```toml\n(.*?)```", text, re.S)
    commands = re.search(r"<!-- quickstart -->\n```sh\n(.*?)```", text, re.S)
    python = re.search(r"## From Python\n\n```python\n(.*?)```", text, re.S)
    assert toml and commands and python, "the README's quickstart blocks moved"
    lines = [re.split(r"\s+#\s", line)[0].strip() for line in commands.group(1).splitlines()]
    return toml.group(1), [line for line in lines if line], python.group(1)


@pytest.mark.integration
def test_the_readme_quickstart_from_a_config_file(
    services: dict[str, str], ns: str, tmp_path: Path
) -> None:
    toml, commands, python = readme_parts(ns)
    assert len(commands) == 5 and commands[2] == "streamer worker &"
    (tmp_path / "streamer.toml").write_text(toml)
    # Where Kafka and Redis are is the only thing the test adds (the README's run has the defaults).
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env |= {
        "STREAMER_KAFKA__BOOTSTRAP_SERVERS": services["bootstrap"],
        "STREAMER_REDIS__URL": services["redis_url"],
        "COLUMNS": "120",
    }
    cli = [sys.executable, "-m", "streamer.ops.cli"]
    worker: subprocess.Popen[bytes] | None = None
    log = tmp_path / "worker.log"
    started = time.monotonic()
    outputs: list[str] = []
    try:
        for line in commands:
            argv = shlex.split(line.removesuffix("&"))
            assert argv[0] == "streamer", line
            if line.endswith("&"):
                with log.open("wb") as fh:
                    worker = subprocess.Popen(
                        [*cli, *argv[1:], "-l", "info"],
                        cwd=tmp_path,
                        env=env,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                    )
                continue
            r = subprocess.run(
                [*cli, *argv[1:]],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=400,
            )
            assert r.returncode == 0, f"{line}\n{r.stdout}\n{r.stderr}"
            outputs.append(r.stdout)
        took = time.monotonic() - started
        print(f"the quickstart's five commands took {took:.1f}s")

        rows = outputs[-1].splitlines()
        header = "unique_id,ds,cutoff,h,streamer," + ",".join(
            f"streamer-{side}-{v}" for v in (80, 95) for side in ("lo", "hi")
        )
        assert rows[0] == header and len(rows) == 1 + 24 * 12, rows[:3]
        _, ds, cutoff, h, value, lo80, hi80, lo95, hi95 = rows[1].split(",")
        # the intervals calibrated in training: nested, around the forecast
        assert float(lo95) < float(lo80) < float(hi80) < float(hi95), rows[1]
        # the months inferred in training: the first step is the month after the event's
        assert h == "1" and len(ds) == 10, rows[1]
        assert pd.Timestamp(ds) == pd.Timestamp(cutoff) + pd.offsets.MonthBegin(1), rows[1]
        float(value)

        assert worker is not None and worker.poll() is None, log.read_text()
        first = log.read_text()
        assert (
            f"serving model {ns} version " in first
            and f"{ns}.events -> {ns}.predictions (dead letters {ns}.events.dlq)" in first
            and f"group {ns}, at-least-once" in first
        ), first

        # The README's Python example, in the same directory.
        test = doctest.DocTestParser().get_doctest(python, {}, "README", "README.md", 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        old = Path.cwd()
        os.chdir(tmp_path)
        try:
            runner.run(test)
        finally:
            os.chdir(old)
        assert runner.failures == 0 and runner.tries >= 4

        # The state, as redis-cli reads it (once the worker has gone through the replay).
        port = services["redis_url"].rsplit(":", 1)[1].split("/")[0]
        deadline = time.monotonic() + 120
        while True:
            r = subprocess.run(
                ["redis-cli", "-p", port, "--raw", "STRLEN", f"streamer:{ns}:A3349335T"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if int(r.stdout.strip() or 0) > 80 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert int(r.stdout.strip()) > 80, r
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(60) == 0, log.read_text()[-3000:]


@pytest.mark.integration
def test_the_python_api_publishes_and_steps_into_redis(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    """``streamer.api``: publish to the registry (workers switch to it), and an online predictor
    whose states are in Redis, where the state CLI reads them and a second predictor goes on from
    them; its predictions equal a fresh in-memory predictor's over the same events."""
    import asyncio

    import streamer.api as st
    from streamer.model.registry import Registry
    from streamer.settings import Settings
    from streamer.state import RedisStateStore, redis_client

    settings = Settings.model_validate({"model_name": ns, "redis": {"url": services["redis_url"]}})
    version = st.publish(model_dir, settings, activate=True)

    async def active() -> str | None:
        reg = Registry(redis_client(settings), ns)
        try:
            return await reg.active()
        finally:
            await reg.aclose()

    assert asyncio.run(active()) == version == st.load(model_dir).version

    events = [
        {"unique_id": f"u{i % 7}", "ds": f"2024-01-{1 + i // 7:02d}", "y": float(i % 5)}
        for i in range(70)
    ]
    model = st.load(model_dir)
    with st.OnlinePredictor(model, RedisStateStore.from_settings(settings)) as live:
        first = live.predict(events[:35])
    with st.OnlinePredictor(model, RedisStateStore.from_settings(settings), offset=35) as live:
        second = live.predict(events[35:])
        assert live.state("u3").step == 10
    with st.OnlinePredictor(model) as memory:
        want = memory.predict(events)
    got = first + second
    assert [p.unique_id for p in got] == [p.unique_id for p in want]
    for a, b in zip(got, want, strict=True):
        assert a.forecast == pytest.approx(b.forecast, rel=1e-5, abs=1e-6)
        assert a.forecast_ds == b.forecast_ds and a.step == b.step
    r = subprocess.run(
        [sys.executable, "-m", "streamer.ops.cli", "state", "get", "u3", "--json"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")},
            "STREAMER_MODEL_NAME": ns,
            "STREAMER_REDIS__URL": services["redis_url"],
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and '"step": 10' in r.stdout, r
