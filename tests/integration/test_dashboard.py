"""``streamer dashboard`` end to end: a real worker, a replay, and the page in headless Chromium.

The browser is Debian's ``chromium`` driven through its ``chromedriver`` (``deploy/local/browser.sh``
installs both); Selenium is given the driver's path, so it never downloads one.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from streamer.kafka import ensure_topics, replay_events
from streamer.model.artifact import save_artifact
from streamer.settings import Settings
from streamer.train.data import event_rows
from tests.conftest import ROOT, make_panel
from tests.integration.test_next_event import token_events
from tests.integration.test_worker import settings_for
from tests.integration.workers import (
    TopicReader,
    WorkerProcess,
    predictions_of,
    produce,
    worker_env,
)
from tests.unit.test_nextevent import next_model

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = ROOT / "build" / "screenshots"


class DashboardProcess:
    """``streamer dashboard --port 0`` in a child process; its URL is read from its output."""

    def __init__(self, env: dict[str, str], log: Path, *args: str):
        self.log = log
        self._fh = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamer.ops.cli", "dashboard", "--port", "0", *args],
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def url(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"dashboard at (http://\S+)", self.log.read_text(errors="replace"))
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the dashboard exited with {self.proc.returncode}:\n{self.tail()}"
                )
            await asyncio.sleep(0.1)
        raise AssertionError(f"the dashboard did not start:\n{self.tail()}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise
        finally:
            self._fh.close()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return orjson.loads(resp.read())


async def until(
    probe: Callable[[], Any], timeout: float, what: str, *procs: WorkerProcess | DashboardProcess
) -> Any:
    """``probe()`` once it returns something true, polled every quarter second; fails after
    ``timeout`` seconds, or at once when one of ``procs`` exited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.proc.poll() is not None:
                raise AssertionError(f"{p.log.name} exited with {p.proc.returncode}:\n{p.tail()}")
        last = probe()
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what} within {timeout}s; last seen: {last}")


def chromium() -> webdriver.Chrome:
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def dashboard_state(driver: webdriver.Chrome) -> dict[str, Any]:
    state: dict[str, Any] | None = driver.execute_script(
        "return window.streamerDashboard ? window.streamerDashboard.state() : null"
    )
    return state or {}


@pytest.mark.integration
async def test_the_page_draws_the_replayed_entity_and_the_workers_throughput(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    df = make_panel(4, 40, 60, seed=5)
    settings = Settings.model_validate(
        {
            "app_id": ns,
            "kafka": {"bootstrap_servers": services["bootstrap"]},
            "topics": {
                "events": f"{ns}.events",
                "predictions": f"{ns}.predictions",
                "windows": f"{ns}.windows",
                "dead_letter": f"{ns}.dlq",
            },
        }
    )
    await ensure_topics(settings)
    env = worker_env(services, ns, model_dir)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    dashboard = DashboardProcess(env, tmp_path / "dashboard.log")
    try:
        url = await dashboard.url()

        def worker_scraped() -> list[dict[str, Any]]:
            return [w for w in get_json(url + "api/status")["workers"] if w["ok"]]

        # Rates come from the deltas between two scrapes: replay once the worker was scraped.
        await until(worker_scraped, 90, "the dashboard did not list the worker", worker, dashboard)
        counts = df["unique_id"].value_counts()
        entity = str(counts.idxmax())
        rows = df[df["unique_id"] == entity]

        # The page is open before the events are sent: it draws them as they come.
        browser.get(f"{url}?entity={entity}")
        await until(
            lambda: dashboard_state(browser).get("missing"), 30, "the page did not load", dashboard
        )
        # A worker that consumes nothing is "idle"; one that steps events, "live".
        await until(
            lambda: dashboard_state(browser).get("badge") == "idle", 30, "no idle badge", dashboard
        )
        replay = asyncio.ensure_future(replay_events(settings, event_rows(df), rate=40))
        await until(
            lambda: dashboard_state(browser).get("badge") == "live", 30, "no live badge", dashboard
        )
        assert await replay == len(df)
        async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
            await out.read_until(len(df), timeout=120, proc=worker)
            preds = [p for p in predictions_of(out.records) if p.unique_id == entity]
        assert len(preds) == len(rows)

        def drawn() -> dict[str, Any]:
            s = dashboard_state(browser)
            done = s.get("points") == len(rows) and (s.get("eventsPerSecondMax") or 0) > 0
            return s if done and any(w["ok"] for w in s["workers"]) else {}

        state = await until(drawn, 60, "the page did not draw the entity", worker, dashboard)
        assert state["appends"] > 0, "the points came all at once, not as they were predicted"

        # The chart holds exactly the replayed values of the entity, in order ...
        assert state["entity"] == entity and state["axis"] == "time" and state["kind"] == "forecast"
        assert state["firstY"] == pytest.approx(rows["y"].iloc[0], rel=1e-12)
        assert state["lastY"] == pytest.approx(rows["y"].iloc[-1], rel=1e-12)
        assert state["ys"] == pytest.approx(rows["y"].tolist(), rel=1e-12)
        # ... with the one-step forecast made at each event drawn over the next one ...
        assert state["priorPoints"] == len(rows) - 1
        assert state["priors"] == pytest.approx([p.forecast[0] for p in preds[:-1]], rel=1e-6)
        # ... and the last prediction's whole forecast drawn after the last value.
        assert state["future"] == pytest.approx(list(preds[-1].forecast), rel=1e-6)
        # ... in the band of its widest prediction interval (the test model's: 95%).
        lows, highs = preds[-1].intervals[95]
        assert state["level"] == 95
        assert state["bandLo"] == pytest.approx(list(lows), rel=1e-6)
        assert state["bandHi"] == pytest.approx(list(highs), rel=1e-6)
        # The per-second metrics saw the replay, and the worker is listed as scraped.
        assert state["eventsPerSecondMax"] > 0 and state["predictionsPerSecondMax"] > 0
        # (read in one script: the table is drawn again every second, and an element found
        # before a redraw is gone by the time its text is asked for)
        rows_text, conn = browser.execute_script(
            "return [[...document.querySelectorAll(\"#workers tbody tr[data-ok='true']\")]"
            ".map(r => r.innerText), document.getElementById('conn').innerText]"
        )
        assert len(rows_text) == 1 and "ok" in rows_text[0], rows_text
        assert conn in ("live", "idle")  # (idle once the replay's last second has passed)
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors

        # The whole page fits the 1280x900 window: the per-second metrics are in the same shot.
        seen, height = browser.execute_script(
            "return [window.innerHeight, document.documentElement.scrollHeight]"
        )
        assert height <= seen, f"the page is {height}px high, the window shows {seen}px"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOTS / "dashboard.png"))
    finally:
        code = dashboard.stop()
        worker_code = worker.stop()
    assert code == 0, dashboard.tail()
    assert worker_code == 0, worker.tail()
    assert "Traceback" not in dashboard.log.read_text()


@pytest.mark.integration
async def test_the_page_draws_a_next_event_model_s_surprise_and_the_values_it_names(
    services: dict[str, str], ns: str, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    model = next_model(features=("temp",))
    save_artifact(model, tmp_path / "model", {"note": "random weights for tests"})
    events = token_events(3, 20, seed=4)
    entity = "e001"
    settings = settings_for(services, ns)
    await ensure_topics(settings)
    env = worker_env(services, ns, tmp_path / "model")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    dashboard = DashboardProcess(env, tmp_path / "dashboard.log")
    try:
        url = await dashboard.url()
        browser.get(f"{url}?entity={entity}")
        await until(
            lambda: dashboard_state(browser).get("missing"), 30, "the page did not load", dashboard
        )
        msgs = [(str(e["unique_id"]).encode(), orjson.dumps(e)) for e in events]
        await produce(services["bootstrap"], settings.topics.events, msgs)
        async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
            await out.read_until(len(events), timeout=120, proc=worker)
            preds = sorted(
                (p for p in predictions_of(out.records) if p.unique_id == entity),
                key=lambda p: p.step,
            )
        assert len(preds) == 20

        def drawn() -> dict[str, Any]:
            s = dashboard_state(browser)
            return s if s.get("kind") == "next" and len(s.get("ys", [])) == 19 else {}

        state = await until(drawn, 60, "the page did not draw the entity", worker, dashboard)
        # each event's surprise under the prediction before it (none for the first) ...
        want = [p.surprise for p in preds[1:]]
        assert state["ys"] == pytest.approx(want, rel=1e-6)
        # ... and the values the last prediction names, with their probabilities, above it
        assert state["next"] == list(preds[-1].next)
        assert state["future"] == pytest.approx(list(preds[-1].values), rel=1e-6)
        assert f"next {preds[-1].next[0]} ({preds[-1].values[0]:.3f})" in state["info"]
        hits = sum(p.rank is not None for p in preds[1:])
        assert f"named before {hits} of 19" in state["info"]
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOTS / "dashboard-next.png"))
    finally:
        code = dashboard.stop()
        worker_code = worker.stop()
    assert code == 0, dashboard.tail()
    assert worker_code == 0, worker.tail()


@pytest.mark.integration
async def test_a_worker_that_cannot_be_scraped_is_listed_as_such(
    services: dict[str, str], ns: str, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}/metrics"
    env = worker_env(services, ns, tmp_path / "no-model")
    dashboard = DashboardProcess(env, tmp_path / "dashboard.log", "--metrics", dead)
    try:
        url = await dashboard.url()

        def listed() -> list[dict[str, Any]]:
            return [
                w for w in get_json(url + "api/status")["workers"] if "cannot scrape" in w["status"]
            ]

        (w,) = await until(listed, 20, "the unreachable worker was not listed", dashboard)
        assert w["url"] == dead and not w["ok"]
        status = await until(
            lambda: (s := get_json(url + "api/status"))["summary"]["lag_source"] and s,
            20,
            "no lag from Kafka",
            dashboard,
        )
        assert status["discovery"] == "--metrics"
        assert status["summary"]["lag_source"] == "kafka"
        # No worker answers: the badge says so instead of "live".
        browser.get(url)
        await until(
            lambda: dashboard_state(browser).get("badge") == "no workers",
            30,
            "the badge did not say no workers",
            dashboard,
        )
    finally:
        code = dashboard.stop()
        sock.close()
    assert code == 0, dashboard.tail()


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer.ops.cli", "dashboard", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.integration
async def test_start_errors_are_one_line(services: dict[str, str], ns: str, tmp_path: Path) -> None:
    env = worker_env(services, ns, tmp_path / "no-model")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    nobody = f"127.0.0.1:{closed.getsockname()[1]}"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        cases = [
            (("--port", str(busy.getsockname()[1])), "cannot serve the dashboard on"),
            (("--redis-url", f"redis://{nobody}/0"), "cannot reach Redis at"),
            (
                ("--bootstrap-servers", nobody, "--metrics", "http://x/metrics"),
                "cannot reach Kafka",
            ),
            (("--port", "70000"), "--port must be between 0 and 65535"),
        ]
        for args, needle in cases:
            r = await asyncio.to_thread(run_cli, env, *args)
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
            assert lines[0].startswith("streamer: error:")
    finally:
        busy.close()
        closed.close()
