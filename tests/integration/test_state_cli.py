"""``streamer state list | stats | export | reset | delete`` against the real Redis, and a reset
and a delete while a worker runs."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamer.kafka import ensure_topics
from streamer.model.artifact import load_artifact
from streamer.serve.predictor import Predictor
from streamer.state import RedisStateStore
from streamer.state.codec import decode
from streamer.train.data import event_rows
from tests.conftest import make_panel
from tests.integration.test_cli_services import cli_env
from tests.integration.test_worker import settings_for
from tests.integration.workers import (
    TopicReader,
    WorkerProcess,
    event_message,
    predictions_of,
    produce,
    store_for,
    worker_env,
)
from tests.reference import check_predictions, expected_by_entity, synthetic_events
from tests.unit.test_cli import run


@pytest.fixture
async def stepped(redis_kind: dict[str, str], ns: str, model_dir: Path) -> pd.DataFrame:
    """Twelve entities stepped by a predictor into Redis (or a Redis Cluster: ``redis_kind``)
    under the model name ``ns``."""
    art = load_artifact(model_dir)
    df = make_panel(12, 4, 9, seed=21)
    pred = Predictor(art.model, art.version, store_for(redis_kind, ns))
    await pred.step_many(synthetic_events(df))
    await pred.aclose()
    return df


@pytest.mark.integration
async def test_list_pages_through_every_state_with_scan(
    redis_kind: dict[str, str], ns: str, stepped: pd.DataFrame
) -> None:
    env = cli_env(redis_kind, ns)
    seen: list[str] = []
    cursor, pages = 0, 0
    while True:  # --limit 1: a page per SCAN call, the cursor goes on from it
        r = run("state", "list", "--limit", "1", "--cursor", str(cursor), "--json", env=env)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        seen += [s["entity"] for s in doc["states"]]
        cursor, pages = doc["cursor"], pages + 1
        if cursor == 0:
            break
    assert sorted(seen) == sorted(stepped["unique_id"].unique())
    steps = stepped.groupby("unique_id").size()

    r = run("state", "list", "e000*", "--json", env=env)
    states = json.loads(r.stdout)["states"]
    assert sorted(s["entity"] for s in states) == [f"e{i:04d}" for i in range(10)]
    assert all(s["step"] == steps[s["entity"]] and s["bytes"] > 80 for s in states)

    r = run("state", "list", "e0011", env=env)
    assert r.returncode == 0 and "e0011" in r.stdout and "ago" in r.stdout
    r = run("state", "list", "nobody*", env=env)
    assert r.returncode == 0 and f"no states match streamer:{ns}:nobody*" in r.stdout


@pytest.mark.integration
async def test_stats_counts_entities_bytes_versions_and_ages(
    redis_kind: dict[str, str], ns: str, model_dir: Path, stepped: pd.DataFrame
) -> None:
    env = cli_env(redis_kind, ns)
    store = store_for(redis_kind, ns)
    entities = sorted(stepped["unique_id"].unique())
    raws = await store.get_many(entities)
    await store.aclose()
    r = run("state", "stats", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    version = load_artifact(model_dir).version
    assert doc["entities"] == 12 and not doc["sampled"]
    assert doc["value_bytes"] == sum(len(x) for x in raws if x is not None)
    assert doc["dtypes"] == {"float32": 12} and doc["model_versions"] == {version: 12}
    assert doc["shapes"] == {"2x16x2": 12}
    ages = doc["last_update_age_s"]
    assert 0 <= ages["min"] <= ages["p50"] <= ages["max"] < 120
    assert ages["buckets"]["<1m"] + ages["buckets"]["<1h"] == 12
    assert doc["steps"]["max"] == stepped.groupby("unique_id").size().max()

    r = run("state", "stats", "--sample", "5", "--json", env=env)
    doc = json.loads(r.stdout)
    assert doc["entities"] == 5 and doc["sampled"]
    r = run("state", "stats", env=env)
    assert r.returncode == 0 and "entities" in r.stdout and "12" in r.stdout


@pytest.mark.integration
async def test_export_writes_decoded_states_to_parquet_and_jsonl(
    redis_kind: dict[str, str], ns: str, stepped: pd.DataFrame, tmp_path: Path
) -> None:
    env = cli_env(redis_kind, ns)
    store = store_for(redis_kind, ns)
    rec = decode((await store.get_many(["e0003"]))[0])  # type: ignore[arg-type]
    await store.aclose()

    r = run("state", "export", "*", str(tmp_path / "all.parquet"), env=env)
    assert r.returncode == 0, r.stderr
    assert f"exported 12 states matching '*' to {tmp_path / 'all.parquet'}" in r.stdout
    table = pd.read_parquet(tmp_path / "all.parquet")
    assert sorted(table["entity"]) == sorted(stepped["unique_id"].unique())
    row = table.set_index("entity").loc["e0003"]
    np.testing.assert_array_equal(np.stack(row["h"]), rec.h)
    np.testing.assert_array_equal(np.stack(row["c"]), rec.c)
    assert row["step"] == rec.step and row["offset"] == rec.offset

    r = run("state", "export", "e001*", str(tmp_path / "some.jsonl"), env=env)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in (tmp_path / "some.jsonl").read_text().splitlines()]
    assert sorted(x["entity"] for x in lines) == ["e0010", "e0011"]

    r = run("state", "export", "*", str(tmp_path / "x.csv"), env=env)
    assert r.returncode == 1 and r.stderr.strip() == (
        "streamer: error: export writes .parquet or .jsonl files, not 'x.csv'"
    )


@pytest.mark.integration
async def test_reset_and_delete_in_place(
    redis_kind: dict[str, str], ns: str, stepped: pd.DataFrame
) -> None:
    env = cli_env(redis_kind, ns)
    store = store_for(redis_kind, ns)
    try:
        before = decode((await store.get_many(["e0004"]))[0])  # type: ignore[arg-type]
        r = run("state", "reset", "e0004", env=env)
        assert r.returncode == 0, r.stderr
        after = decode((await store.get_many(["e0004"]))[0])  # type: ignore[arg-type]
        assert after.step == 0 and not after.h.any() and not after.c.any()
        assert (after.partition, after.offset) == (before.partition, before.offset)
        assert after.updated_ms > before.updated_ms
        r = run("state", "delete", "e0004", env=env)
        assert r.returncode == 0 and f"deleted streamer:{ns}:e0004" in r.stdout, r.stderr
        assert await store.get_many(["e0004", "e0005"]) != [None, None]
        assert (await store.get_many(["e0004"]))[0] is None
    finally:
        await store.aclose()


@pytest.mark.integration
async def test_the_paging_hint_keeps_every_option_and_ids_cannot_drive_the_terminal(
    services: dict[str, str], ns: str, model_dir: Path
) -> None:
    """``state list --limit`` prints the command of the next page with the options it was given
    (a hint without ``--model-name`` found nothing); entity ids holding an ANSI escape sequence or
    a newline are shown escaped, one row each."""
    art = load_artifact(model_dir)
    hostile = ["red\x1b[31mtext", "two\nlines", "[bold]markup[/bold]"]
    names = hostile + [f"e{i:03d}" for i in range(40)]
    pred = Predictor(art.model, art.version, store_for(services, ns))
    df = make_panel(len(names), 2, 2, seed=4)
    df["unique_id"] = df["unique_id"].map(
        dict(zip(sorted(df["unique_id"].unique()), names, strict=True))
    )
    await pred.step_many(synthetic_events(df))
    await pred.aclose()

    env = {k: v for k, v in cli_env(services, ns).items() if k != "STREAMER_MODEL_NAME"}
    r = run("state", "list", "--model-name", ns, "--limit", "5", env={**env, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    more = [line for line in r.stdout.splitlines() if "more: " in line]
    assert more, r.stdout
    hint = more[0].split("more: ", 1)[1]
    assert f"--model-name {ns}" in hint and "--limit 5" in hint and "--cursor " in hint, hint
    seen = []
    for _ in range(20):  # follow the hints to the end: every state, the hostile ones escaped
        argv = shlex.split(hint)[1:]
        r = run(*argv, env={**env, "COLUMNS": "200"})
        assert r.returncode == 0 and "\x1b" not in r.stdout, r
        seen.append(r.stdout)
        more = [line for line in r.stdout.splitlines() if "more: " in line]
        if not more:
            break
        hint = more[0].split("more: ", 1)[1]
    r = run("state", "list", "--model-name", ns, "--limit", "500", env={**env, "COLUMNS": "200"})
    out = r.stdout
    assert "\x1b" not in out and "red\\x1b[31mtext" in out and "two\\nlines" in out, out
    assert "[bold]markup[/bold]" in out  # shown as it is, not as rich markup
    assert sum("lines" in line for line in out.splitlines()) == 1
    r = run("state", "get", "two\nlines", "--model-name", ns, env=env)
    assert r.returncode == 0 and "two\\nlines" in r.stdout and "\x1b" not in r.stdout, r


@pytest.mark.integration
def test_errors_are_one_line(services: dict[str, str], ns: str) -> None:
    env = cli_env(services, ns)
    for args in (("reset", "nobody"), ("delete", "nobody")):
        r = run("state", *args, env=env)
        assert r.returncode == 1
        assert r.stderr.strip() == (
            f"streamer: error: no state for entity 'nobody' (key streamer:{ns}:nobody)"
        )
    down = {**env, "STREAMER_REDIS__URL": "redis://127.0.0.1:1/0"}
    for args in (("list",), ("stats",), ("reset", "x"), ("delete", "x")):
        r = run("state", *args, env=down)
        assert r.returncode == 1, args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "streamer: error: cannot reach Redis at redis://127.0.0.1:1/0"
        ), (args, r.stderr)


@pytest.mark.integration
async def test_reset_and_delete_while_a_worker_runs(
    services: dict[str, str], ns: str, model_dir: Path, tmp_path: Path
) -> None:
    """A worker holds the states in its cache; a reset and a delete between two halves of the
    stream take effect anyway: the reset entity continues from zeros with its fence kept, the
    deleted one starts over, every other entity continues as if nothing happened."""
    art = load_artifact(model_dir)
    df = make_panel(6, 16, 16, seed=23)
    df["n"] = df.groupby("unique_id").cumcount()
    first, second = df[df["n"] < 8].drop(columns="n"), df[df["n"] >= 8].drop(columns="n")
    settings = settings_for(services, ns)
    await ensure_topics(settings)
    env = cli_env(services, ns)
    worker = WorkerProcess(worker_env(services, ns, model_dir), tmp_path / "w.log")
    try:
        async with TopicReader(services["bootstrap"], settings.topics.predictions) as out:
            await produce(
                services["bootstrap"],
                settings.topics.events,
                [event_message(ev) for ev in event_rows(first)],
            )
            await out.read_until(len(first), timeout=120, proc=worker)
            store = RedisStateStore.from_url(services["redis_url"], ns)
            before = decode((await store.get_many(["e0001"]))[0])  # type: ignore[arg-type]

            r = run("state", "reset", "e0001", env=env)
            assert r.returncode == 0, r.stderr
            assert r.stdout.startswith("reset e0001: its state starts over at its next event")
            after = decode((await store.get_many(["e0001"]))[0])  # type: ignore[arg-type]
            assert after.step == 0 and not after.h.any() and not after.c.any()
            assert (after.partition, after.offset) == (before.partition, before.offset)
            assert after.updated_ms > before.updated_ms
            r = run("state", "delete", "e0002", env=env)
            assert r.returncode == 0 and r.stdout.strip() == f"deleted streamer:{ns}:e0002"
            assert (await store.get_many(["e0002"])) == [None]

            await produce(
                services["bootstrap"],
                settings.topics.events,
                [event_message(ev) for ev in event_rows(second)],
            )
            await out.read_until(len(df), timeout=120, proc=worker)
            await out.drain(quiet_s=2)
            preds = predictions_of(out.records)
            finals = await store.get_many(["e0001", "e0002", "e0003"])
            await store.aclose()
    finally:
        assert worker.stop() == 0, worker.tail()

    assert len(preds) == len(df)
    later = [p for p in preds[len(first) :]]
    restarted = {"e0001", "e0002"}
    # The reset and the deleted entity: their second half from zeros, steps counted from 1.
    check_predictions(
        [p for p in later if p.unique_id in restarted],
        expected_by_entity(art.model, second[second["unique_id"].isin(restarted)]),
    )
    # Everyone else: the whole series, as if nothing had happened.
    check_predictions(
        [p for p in preds if p.unique_id not in restarted],
        expected_by_entity(art.model, df[~df["unique_id"].isin(restarted)].drop(columns="n")),
    )
    e1, e2, e3 = (decode(x) for x in finals)  # type: ignore[arg-type]
    assert (e1.step, e2.step, e3.step) == (8, 8, 16)
