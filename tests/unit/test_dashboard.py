"""The dashboard's arithmetic and bookkeeping, without Kafka or Redis: rates and latency quantiles
from worker scrapes, each entity's points with the forecasts aligned, and the page's endpoints."""

from __future__ import annotations

import asyncio
import math
import re
import time
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from streamer.ops.dashboard.collector import Collector, Tick
from streamer.ops.dashboard.entities import EntitySeries, EntityStore
from streamer.ops.dashboard.rates import (
    Interval,
    counter_deltas,
    histogram_quantile,
    interval_of,
    parse_metrics,
)
from streamer.ops.dashboard.server import WEB, DashboardServer
from streamer.ops.metrics import Metrics
from streamer.schemas import Prediction
from streamer.settings import Settings

INF = float("inf")


# ------------------------------------------------------------------ rates and quantiles


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # linear within the bucket the rank falls in; the first bucket starts at 0
        (0.5, [(1.0, 10), (2.0, 10), (INF, 10)], 0.5),
        (0.25, [(1.0, 0), (2.0, 4), (4.0, 8), (INF, 8)], 1.5),
        (0.75, [(1.0, 0), (2.0, 4), (4.0, 8), (INF, 8)], 3.0),
        # a rank on a bucket's upper edge is that bound
        (0.5, [(0.1, 5), (0.2, 10), (INF, 10)], 0.1),
        # the rank in +Inf: the highest finite bound, as PromQL answers
        (0.99, [(0.1, 5), (0.2, 10), (INF, 100)], 0.2),
        # nothing observed: no answer rather than 0
        (0.5, [(0.1, 0), (INF, 0)], None),
        (0.5, [], None),
    ],
)
def test_histogram_quantile_answers_as_promql(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    got = histogram_quantile(q, buckets)
    assert got == (None if expected is None else pytest.approx(expected))


def scrape(m: Metrics) -> dict[str, float]:
    return parse_metrics(generate_latest(m.registry).decode()).counters


def test_latency_quantiles_cover_only_the_interval_between_two_scrapes() -> None:
    """Minutes-long latencies observed before the first scrape must not leak into the quantiles
    of the interval after it: only bucket deltas count."""
    m = Metrics()
    rng = np.random.default_rng(0)
    m.latency.observe_many(rng.uniform(100, 300, 5000))  # a worker catching up, long ago
    before = scrape(m)
    recent = rng.uniform(0.005, 0.050, 2000)
    m.latency.observe_many(recent)
    iv = interval_of([(counter_deltas(before, scrape(m)), 1.0)])
    assert iv.latency[-1] == (INF, 2000)
    bounds = [0.0, *m.latency.bounds.tolist()]
    for q in (0.5, 0.95, 0.99):
        true = float(np.quantile(recent, q))
        hi = next(b for b in bounds if b >= true)
        lo = bounds[bounds.index(hi) - 1]
        got = histogram_quantile(q, iv.latency)
        assert got is not None and lo <= got <= hi, (q, true, got)


def test_rates_are_per_worker_over_its_own_interval_then_added() -> None:
    a0 = {"events": 100.0, "predictions": 90.0, "dead_letters:invalid_json": 1.0}
    a1 = {"events": 150.0, "predictions": 140.0, "dead_letters:invalid_json": 3.0}
    b0 = {"events": 10.0, "predictions": 10.0}
    b1 = {"events": 70.0, "predictions": 70.0, "dead_letters:non_finite": 4.0}
    iv = interval_of([(counter_deltas(a0, a1), 1.0), (counter_deltas(b0, b1), 2.0)])
    assert iv.events_s == pytest.approx(50 + 30)  # b was missed by a scrape: 60 over 2 s
    assert iv.predictions_s == pytest.approx(50 + 30)
    assert iv.dead_letters_s == pytest.approx({"invalid_json": 2.0, "non_finite": 2.0})


def test_a_restarted_worker_counts_from_zero_again() -> None:
    before = {"events": 500.0, "batch_size_sum": 500.0, "batch_size_count": 10.0}
    after = {"events": 40.0, "batch_size_sum": 40.0, "batch_size_count": 1.0}
    assert counter_deltas(before, after) == after
    iv = interval_of([(counter_deltas(before, after), 0.5)])
    assert iv.events_s == 80.0 and iv.batch_sizes == (40.0, 1.0)


def test_a_worker_exposition_is_read_by_name() -> None:
    m = Metrics()
    m.events.inc(12)
    m.predictions.inc(11)
    m.dead_letters.labels("invalid_json").inc(1)
    m.batch_size.observe(12)
    m.step.observe(0.004)
    m.partitions({0: 5, 3: 0}, owned=2)
    m.serving("abc123")
    s = parse_metrics(generate_latest(m.registry).decode())
    assert s.counters["events"] == 12 and s.counters["predictions"] == 11
    assert s.counters["dead_letters:invalid_json"] == 1
    assert (s.counters["batch_size_sum"], s.counters["batch_size_count"]) == (12, 1)
    assert s.counters["step_sum"] == pytest.approx(0.004)
    assert s.lag == {0: 5, 3: 0} and s.assigned == 2 and s.model_version == "abc123"
    assert "latency_le:+Inf" in s.counters


# ------------------------------------------------------------------ the collector's history


def tick(t: float, work: Interval | None, lag: int | None = 0) -> Tick:
    return Tick(t=t, work=work, lag=lag)


def busy(events: float, dead: dict[str, float], latency: list[tuple[float, float]]) -> Interval:
    return Interval(events, events, dead, latency, (events, 2.0), (0.01, 2.0))


def test_history_columns_and_the_top_row_figures() -> None:
    c = Collector(Settings(), kafka=None, redis=None)  # type: ignore[arg-type]
    c.history.extend(
        [
            tick(1.0, busy(10, {}, [(0.1, 10), (INF, 10)])),
            tick(2.0, None, None),  # no worker could be scraped: a gap, not a zero
            tick(3.0, busy(30, {"invalid_json": 2.0}, [(0.1, 0), (INF, 30)]), lag=7),
        ]
    )
    cols = c.history_json()
    assert cols["t"] == [1.0, 2.0, 3.0]
    assert cols["events"] == [10, None, 30]
    assert cols["dead"] == {"invalid_json": [0.0, None, 2.0]}
    assert cols["p50"][0] == pytest.approx(0.05) and cols["p50"][1] is None
    assert cols["p50"][2] == pytest.approx(0.1)  # all in +Inf: the highest finite bound
    s = c.summary()
    assert s["events_s"] == 30 and s["lag"] == 7
    assert s["p50"] == pytest.approx(0.1)  # 10 of 40 within 0.1 s: the median is in +Inf
    assert s["dead_letters_s"] == pytest.approx(1.0)  # 2/s in one of two known seconds
    assert s["batch_mean"] == pytest.approx(10.0) and s["step_ms"] == pytest.approx(5.0)


# ------------------------------------------------------------------ entities


def pred(
    step: int,
    ds: str | None = None,
    *,
    uid: str = "e1",
    partition: int = 0,
    offset: int | None = None,
    values: tuple[float, ...] | None = None,
    classes: tuple[str, ...] = (),
) -> Prediction:
    return Prediction(
        uid,
        ds or f"2024-01-{step:02d}",
        float(step * 10),
        partition,
        step if offset is None else offset,
        "v1",
        step,
        values if values is not None else (step + 0.5, step + 0.6, step + 0.7),
        classes,
    )


def test_each_value_is_overlaid_with_the_forecast_made_at_the_event_before() -> None:
    s = EntitySeries()
    for step in range(1, 6):
        assert s.add(pred(step))
    view, _ = s.view("e1")
    assert view["y"] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert view["prior"] == [None, 1.5, 2.5, 3.5, 4.5]  # the one-step forecast made at step - 1
    assert view["future"] == [5.5, 5.6, 5.7]  # the latest forecast, drawn after the last value
    day = 86400.0
    assert view["axis"] == "time" and view["x"][1] - view["x"][0] == day
    assert view["future_x"] == [view["x"][-1] + k * day for k in (1, 2, 3)]
    assert (view["level"], view["future_lo"], view["future_hi"]) == (None, [], [])


def test_the_latest_forecast_comes_with_its_widest_interval() -> None:
    s = EntitySeries()
    p = pred(1)
    p.intervals = {80: ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)), 95: ((0.5, 1.5, 2.5), (5.0, 6.0, 7.0))}
    s.add(p)
    view, _ = s.view("e1")
    assert view["level"] == 95
    assert (view["future_lo"], view["future_hi"]) == ([0.5, 1.5, 2.5], [5.0, 6.0, 7.0])
    s.add(pred(2))  # a model without intervals now: no band
    assert s.view("e1")[0]["future_lo"] == [] and s.view("e1")[0]["level"] is None


def test_no_overlay_across_a_missed_event_and_repeats_are_dropped() -> None:
    s = EntitySeries()
    s.add(pred(1))
    s.add(pred(2))
    assert not s.add(pred(2))  # the same event again (at-least-once, after a crash)
    assert not s.add(pred(1))
    s.add(pred(4))  # step 3 never reached the dashboard: no forecast lines up with step 4
    view, _ = s.view("e1")
    assert view["step"] == [1, 2, 4] and view["prior"] == [None, 1.5, None]
    s.add(pred(1, partition=1, offset=0))  # the topic was repartitioned: a new source counts
    assert len(s.points) == 4


def test_a_page_gets_the_new_points_then_all_of_them_when_it_fell_behind() -> None:
    s = EntitySeries(max_points=4)
    for step in range(1, 4):
        s.add(pred(step))
    full, cursor = s.view("e1")
    assert full["full"] and full["step"] == [1, 2, 3]
    s.add(pred(4))
    s.add(pred(5))
    new, cursor = s.view("e1", cursor)
    assert not new["full"] and new["step"] == [4, 5] and new["prior"] == [3.5, 4.5]
    assert len(new["x"]) == 2 and new["seq"] == 5
    for step in range(6, 11):  # more than the buffer holds since the page's cursor
        s.add(pred(step))
    behind, _ = s.view("e1", cursor)
    assert behind["full"] and behind["step"] == [7, 8, 9, 10]


def test_dates_that_go_backwards_or_are_not_dates_are_drawn_in_arrival_order() -> None:
    s = EntitySeries()
    s.add(pred(1, "2024-01-05"))
    s.add(pred(2, "2024-01-03"))
    view, _ = s.view("e1")
    assert view["axis"] == "seq" and view["x"] == [1.0, 2.0]
    assert view["future_x"] == [3.0, 4.0, 5.0]
    t = EntitySeries()
    t.add(pred(1, "week 1"))
    assert t.view("e1")[0]["axis"] == "seq"
    u = EntitySeries()  # monthly: the forecast is spaced by the median gap, 31 days here
    for step, month in enumerate(("2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01"), 1):
        u.add(pred(step, month))
    v, _ = u.view("e1")
    assert v["future_x"][0] - v["x"][-1] == 31 * 86400.0


def test_a_classifier_shows_its_class_probabilities() -> None:
    s = EntitySeries()
    s.add(pred(1))
    _, cursor = s.view("e1")
    s.add(pred(2, values=(0.2, 0.8), classes=("no", "yes")))
    s.add(pred(3, values=(0.6, 0.4), classes=("no", "yes")))
    view, _ = s.view("e1", cursor)
    assert view["full"]  # another kind of model: the page starts the chart again
    assert view["classes"] == ["no", "yes"] and view["probs"] == [[0.2, 0.6], [0.8, 0.4]]
    assert view["prior"] == [None, None] and view["future"] == []


def test_the_store_keeps_the_recently_updated_entities_within_its_bounds() -> None:
    store = EntityStore(max_entities=3, max_points=10, max_total_points=20)
    for uid in ("a", "b", "c"):
        for step in range(1, 6):
            store.add(pred(step, uid=uid))
    store.add(pred(6, uid="a"))  # "a" is the most recent now
    store.add(pred(1, uid="d"))  # a fourth entity: "b", the least recently updated, goes
    assert store.get("b") is None and len(store) == 3 and store.points == 6 + 5 + 1
    for step in range(2, 11):  # 20 points at most: "c" goes next
        store.add(pred(step, uid="d"))
    assert store.get("c") is None and store.points == 6 + 10
    assert store.read == 3 * 5 + 1 + 1 + 9


def test_entity_search_lists_prefix_matches_first() -> None:
    store = EntityStore()
    for uid in ("store-10", "store-2", "big-store-1", "warehouse"):
        store.add(pred(1, uid=uid))
    assert store.search("store") == ["store-10", "store-2", "big-store-1"]
    assert store.search("STORE") == []
    assert store.search("", limit=2) == ["big-store-1", "store-10"]
    assert store.search("store", limit=1) == ["store-10"]


# ------------------------------------------------------------------ the page and its server


def test_the_page_loads_nothing_from_elsewhere() -> None:
    html = (WEB / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(r.startswith("/static/") for r in refs), refs
    for ref in refs:
        assert (WEB / ref.removeprefix("/static/")).is_file(), ref
    for name in ("dashboard.js", "dashboard.css"):
        assert "http" not in (WEB / name).read_text(), name
    assert (WEB / "vendor" / "uPlot.LICENSE").read_text().startswith("The MIT License")


@pytest.fixture
async def client() -> TestClient:  # type: ignore[type-arg]
    store = EntityStore()
    for step in range(1, 4):
        store.add(pred(step, uid="store-1"))
    collector = Collector(Settings(app_id="shop"), kafka=None, redis=None)  # type: ignore[arg-type]
    collector.history.append(tick(time.time(), busy(5, {}, [(0.1, 5), (INF, 5)])))
    collector.ticks = 1
    reader = SimpleNamespace(status="reading")
    server = DashboardServer(collector.settings, collector, store, reader)  # type: ignore[arg-type]
    async with TestClient(TestServer(server.app())) as c:
        yield c


async def test_the_endpoints(client: TestClient) -> None:  # type: ignore[type-arg]
    page = await client.get("/")
    assert page.status == 200 and "streamerDashboard" not in await page.text()
    js = await client.get("/static/dashboard.js")
    assert js.status == 200 and "window.streamerDashboard" in await js.text()
    assert (await client.get("/static/vendor/uPlot.iife.min.js")).status == 200
    found = await (await client.get("/api/entities?q=store")).json()
    assert found == {"entities": ["store-1"], "total": 1}
    one = await (await client.get("/api/entity?id=store-1")).json()
    assert one["y"] == [10.0, 20.0, 30.0] and one["prior"] == [None, 1.5, 2.5]
    assert (await client.get("/api/entity?id=nobody")).status == 404
    status = await (await client.get("/api/status")).json()
    assert status["app_id"] == "shop" and status["summary"]["events_s"] == 5
    assert (await client.get("/api/entities?limit=x")).status == 400


async def test_the_stream_sends_history_status_and_the_entity(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get("/events?entity=store-1")
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events: dict[str, object] = {}
    kind = None
    async with asyncio.timeout(5):
        while "entity" not in events:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                events[kind] = orjson.loads(line[6:])
    resp.close()
    assert list(events) == ["history", "status", "entity"]
    assert events["history"]["events"] == [5]  # type: ignore[index]
    assert events["entity"]["full"] and events["entity"]["step"] == [1, 2, 3]  # type: ignore[index]


def next_pred(step: int, surprise: float | None, rank: int | None) -> Prediction:
    p = pred(step, values=(0.5, 0.3))
    p.y = math.nan
    p.next, p.surprise, p.rank = (f"k{step}", f"k{step + 1}"), surprise, rank
    return p


def test_a_next_event_model_shows_each_event_s_surprise_and_the_values_it_names() -> None:
    s = EntitySeries()
    s.add(pred(1))
    _, cursor = s.view("e1")
    s.add(next_pred(2, None, None))  # (the entity's first event under this model: no surprise)
    s.add(next_pred(3, 1.25, 2))
    s.add(next_pred(4, 7.5, None))  # (not among the values named before it)
    view, cursor = s.view("e1", cursor)
    assert view["full"]  # another kind of model: the page starts the chart again
    assert view["surprise"] == [None, 1.25, 7.5] and view["rank"] == [None, 2, None]
    assert view["next"] == ["k4", "k5"] and view["future"] == [0.5, 0.3]
    assert view["future_x"] == [] and view["prior"] == [None, None, None]
    s.add(next_pred(5, 0.5, 1))
    new, _ = s.view("e1", cursor)
    assert not new["full"] and new["surprise"] == [0.5] and new["rank"] == [1]
    s.add(pred(6))  # a forecaster again
    back, _ = s.view("e1")
    assert "next" not in back and back["future"] == [6.5, 6.6, 6.7] and len(back["future_x"]) == 3
