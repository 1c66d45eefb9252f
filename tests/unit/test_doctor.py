"""The doctor's verdicts without services: what each finding means for a worker."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from streamer.model import ModelSpec
from streamer.ops.doctor import (
    Check,
    GroupOffsets,
    eviction_check,
    lag_check,
    persistence_check,
    producers_check,
    redact,
    render,
    settings_check,
    states_check,
    topic_checks,
    workers_check,
)
from streamer.ops.presence import WorkerInfo
from streamer.settings import Settings

SPEC = ModelSpec(hidden_size=16, num_layers=2)  # an LSTM: two tensors of 2x16


@pytest.mark.parametrize(
    ("policy", "limit", "ttl", "status", "needle"),
    [
        ("noeviction", "1.00G", 3600, "ok", "writes fail and workers wait"),
        ("allkeys-lru", None, 3600, "ok", "no maxmemory"),
        ("allkeys-lru", "1.00G", 0, "warn", "any key, states and the model registry"),
        ("allkeys-random", "1.00G", 3600, "warn", "restarts from zeros"),
        ("volatile-lru", "1.00G", 3600, "warn", "STREAMER_STATE_TTL_S=3600"),
        ("volatile-ttl", "1.00G", 0, "ok", "states have no TTL"),
    ],
)
def test_eviction_policies(
    policy: str, limit: str | None, ttl: int, status: str, needle: str
) -> None:
    c = eviction_check(policy, limit, ttl)
    assert c.status == status and needle in c.detail and policy in c.detail


def test_persistence() -> None:
    assert persistence_check("", False, True).status == "warn"
    assert persistence_check("3600 1", False, True) == Check(
        "redis persistence", "ok", "RDB (save 3600 1), AOF off"
    )
    assert persistence_check("", True, True) == Check("redis persistence", "ok", "RDB off, AOF on")
    assert persistence_check("3600 1", False, False).detail.endswith("the last RDB snapshot failed")
    assert persistence_check(None, False, True).status == "ok"  # CONFIG refused: cannot tell


def test_topics() -> None:
    s = Settings.model_validate({"topics": {"events": "ev", "partitions": 3}})
    ok = {"ev": (3, 1), "predictions": (3, 1), "ev.dlq": (1, 3)}
    got = {c.name: c for c in topic_checks(s, ok, window_model=False)}
    assert got["topic events"] == Check("topic events", "ok", "'ev': 3 partitions, replication 1")
    assert got["topic dead-letter"].detail == "'ev.dlq': 1 partitions, replication 3"
    assert got["topic windows"].status == "ok"  # a step model does not need it
    got = {c.name: c for c in topic_checks(s, {}, window_model=True)}
    assert got["topic events"].status == "fail"
    assert [got[n].status for n in ("topic predictions", "topic windows", "topic dead-letter")] == [
        "warn"
    ] * 3
    assert "creates it (3 partitions)" in got["topic windows"].detail
    assert {c.status for c in topic_checks(s, None, None)} == {"warn"}  # Kafka not asked


def test_states() -> None:
    fits = ("v1", (2, 16, 2, 0))
    assert states_check([], False, SPEC, "v1", "keep").detail.startswith("no stored states")
    assert states_check([fits] * 5, False, SPEC, "v1", "keep") == Check(
        "states", "ok", "5 sampled; model versions v1 (5); all fit the model"
    )
    c = states_check(
        [fits, ("v0", (2, 16, 2, 0)), ("v0", (1, 16, 1, 0)), None], True, SPEC, "v1", "keep"
    )
    assert c.status == "warn"
    assert c.detail == (
        "4 sampled (there are more); model versions v0 (2), v1 (1); 1 cannot be decoded; "
        "1 have another shape (1 tensors of 1x16; the model's: 2 of 2x16): workers reset them"
    )
    # another version of the same shape continues, unless the policy resets it
    assert states_check([("v0", (2, 16, 2, 0))], False, SPEC, "v1", "keep").status == "ok"
    c = states_check([("v0", (2, 16, 2, 0))], False, SPEC, "v1", "reset")
    assert c.status == "warn" and "1 were written by another version" in c.detail
    # a seasonal model's states keep their components: states without them start over
    seasonal = replace(SPEC, horizon=3, season=12, smoothing=(0.3, 0.1))
    assert states_check([("v1", (2, 16, 2, 14))], False, seasonal, "v1", "keep").status == "ok"
    c = states_check([fits], False, seasonal, "v1", "keep")
    assert (
        c.status == "warn"
        and "(2 tensors of 2x16; the model's: 2 of 2x16 and 14 components)" in c.detail
    )


def worker(wid: str, version: str, partitions: list[int]) -> WorkerInfo:
    return WorkerInfo(wid, "host", 1, None, "m", version, partitions)


def test_workers() -> None:
    assert workers_check([], "app", "v1", 4).status == "warn"
    two = [worker("a", "v1", [0, 1]), worker("b", "v1", [2, 3])]
    assert workers_check(two, "app", "v1", 4) == Check(
        "workers", "ok", "2 live: a (v1, partitions 0-1), b (v1, partitions 2-3)"
    )
    c = workers_check([worker("a", "v0", [0, 2]), worker("b", "v1", [])], "app", "v1", 1)
    assert c.status == "warn"
    assert c.detail.endswith("a serve another model than v1; 1 idle: more workers than partitions")
    c = workers_check([worker("a", "v1", [0])], "app", "v1", 3)
    assert c.detail.endswith("partitions 1-2 owned by none (a rebalance?)")


def test_producers() -> None:
    assert producers_check(None).status == "warn" and producers_check([]).status == "warn"
    a, b = worker("a", "v1", [0]), worker("b", "v1", [1])
    a.dead_letters = {"invalid_json": 3}
    assert producers_check([a, b]) == Check(
        "producers",
        "ok",
        "every entity's events on one partition (3 dead letters since the workers started, "
        "none for that)",
    )
    b.dead_letters = {"partition_conflict": 4, "contended": 1}
    c = producers_check([a, b])
    assert c.status == "warn"
    assert c.detail.startswith("4 events came on another partition than their entity's")
    assert "murmur2_random" in c.detail and "1 events were dead-lettered" in c.detail


def test_lag() -> None:
    idle = GroupOffsets("g", "ev", "Empty", 0, {0: 7, 1: 3}, {0: 0, 1: 1}, {})
    c = lag_check(idle, live=0)
    assert c.status == "warn"
    assert c.detail == (
        "group 'g' (Empty, 0 members): nothing committed yet, 9 events waiting on 'ev'; "
        "no worker is consuming them"
    )
    assert lag_check(idle, live=None).status == "ok"  # cannot tell: do not warn
    done = GroupOffsets("g", "ev", "Stable", 2, {0: 7, 1: 3}, {0: 0, 1: 0}, {0: 7, 1: 3})
    assert lag_check(done, live=0) == Check(
        "consumer lag", "ok", "group 'g' (Stable, 2 members): no lag on 'ev'"
    )


def test_settings(tmp_path: Path) -> None:
    c = settings_check(Settings(app_id="a", model_name="m", device="cpu"))
    assert c.status == "ok" and c.detail.startswith(
        "app a, model m, device cpu (cpu), at_least_once"
    )
    bad = Settings.model_validate(
        {
            "redis": {"url": "redis://u:pw@h:1/0"},
            "kafka": {"security_protocol": "SASL_SSL", "ssl_cafile": str(tmp_path / "none.pem")},
        }
    )
    c = settings_check(bad)
    assert c.status == "fail"
    assert "STREAMER_KAFKA__SSL_CAFILE" in c.detail and "SASL_USERNAME" in c.detail
    assert "redis://u:***@h:1/0" in c.detail and "pw" not in c.detail


def test_render_and_redact() -> None:
    text = render([Check("redis", "ok", "fine"), Check("topic events", "fail", "missing")])
    assert text.splitlines() == [
        "✓ redis              fine",
        "✗ topic events       missing",
        "2 checks: 1 ok, 0 warnings, 1 failed",
    ]
    assert redact("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("rediss://h:6379/0") == "rediss://h:6379/0"


def test_the_model_line_names_its_seasons() -> None:
    from streamer.ops.doctor.probes import _model

    one = replace(SPEC, horizon=3, season=12, smoothing=(0.3, 0.1))
    two = replace(SPEC, horizon=24, season=24, season2=168, smoothing=(0.3, 0.1, 0.2))
    assert ", seasonal components over 12 steps" in _model(one, "v1", "m").check.detail
    assert ", seasonal components over 24 and 168 steps" in _model(two, "v1", "m").check.detail
    assert "seasonal" not in _model(SPEC, "v1", "m").check.detail
