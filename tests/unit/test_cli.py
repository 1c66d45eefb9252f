"""The command line without services: argument errors, training, reproducibility."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_panel


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    return subprocess.run(
        [sys.executable, "-m", "streamer.ops.cli", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "required: command"),
        (("frobnicate",), "invalid choice"),
        (("train",), "required: file, --out"),
        (("train", "x.csv", "--out", "d", "--epochs", "zero"), "expected a number"),
        (("train", "x.csv", "--out", "d", "--horizon", "-3"), "must be positive"),
        (("train", "x.csv", "--out", "d", "--season", "24,week"), "expected auto, N or N,M"),
        (("train", "x.csv", "--out", "d", "--season", "24,"), "expected auto, N or N,M"),
        (("train", "x.csv", "--out", "d", "--season", "24,100"), "a multiple of the first (24)"),
        (("train", "x.csv", "--out", "d", "--season", "0,168"), "a second season needs a first"),
        (("replay", "x.csv", "--rate", "fast"), "expected a number"),
        (("state",), "required: state_command"),
        (("state", "get"), "required: entity"),
        (("tail", "--max", "0"), "must be positive"),
        (("tail", "--format", "xml"), "invalid choice"),
        (("tail", "--model-name", "m"), "unrecognized arguments: --model-name m"),
        (("train", "x.csv", "--out", "d", "--redis-url", "redis://h"), "unrecognized arguments"),
        (("replay", "x.csv", "--redis-url", "redis://h"), "unrecognized arguments"),
        (("state", "list", "--limit", "0"), "must be positive"),
        (("state", "export", "*"), "required: file"),
        (("state", "stats", "--sample", "few"), "expected a number"),
        (("doctor", "--timeout", "0"), "must be positive"),
        (("dashboard", "--port", "http"), "invalid int value"),
        (("worker", "-l", "loud"), "invalid choice"),
    ],
)
def test_wrong_arguments_get_one_line_and_status_2(args: tuple[str, ...], needle: str) -> None:
    r = run(*args, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "env", "needle", "code"),
    [
        (("train", "/nonexistent.csv", "--out", "/tmp/x"), {}, "no such file", 1),
        (("train", "FILE.txt", "--out", "/tmp/x"), {}, "expected a .csv or .parquet", 1),
        (("replay", "BADCOLS.csv"), {}, "missing column(s) y", 1),
        (("state", "get", "x"), {"STREAMER_DEVICE": "tpu"}, "invalid setting device", 2),
        (
            ("state", "get", "x"),
            {"STREAMER_BATCH__MAX_SIZE": "-1"},
            "invalid setting batch.max_size",
            2,
        ),
        (("worker",), {}, "no model", 1),
        (("state", "list"), {"STREAMER_APPID": "x"}, "did you mean STREAMER_APP_ID?", 1),
        (("state", "list", "--config", "/nonexistent.toml"), {}, "no configuration file", 1),
        (("worker",), {"STREAMER_METRICS__PORT": "70000"}, "invalid setting metrics.port", 2),
        (("worker", "--engine", "kafka"), {}, "invalid setting engine", 2),
        (
            ("worker", "--engine", "faust"),
            {"STREAMER_PROCESSING_GUARANTEE": "exactly_once"},
            "invalid settings: the faust engine is at least once",
            2,
        ),
    ],
)
def test_errors_at_run_time_are_one_line(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], needle: str, code: int
) -> None:
    (tmp_path / "FILE.txt").write_text("a,b\n")
    (tmp_path / "BADCOLS.csv").write_text("unique_id,ds,value\na,2024-01-01,1\n")
    args = tuple(str(tmp_path / a) if a in ("FILE.txt", "BADCOLS.csv") else a for a in args)
    r = run(*args, env={**env, "STREAMER_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}, timeout=120)
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("state", "list"),
        ("state", "get", "x"),
        ("doctor",),
        ("worker",),
        ("tail",),
        ("dashboard",),
        ("model", "list"),
    ],
)
def test_a_malformed_redis_url_is_one_line_everywhere(args: tuple[str, ...]) -> None:
    """The redis-cli habit (host:port without a scheme): one line naming the setting, no
    traceback, from every command that takes --redis-url (tail takes none: the variable)."""
    flags = ("--redis-url", "localhost:6379") if args != ("tail",) else ()
    r = run(*args, *flags, env={"STREAMER_REDIS__URL": "localhost:6379"}, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "invalid setting redis.url" in lines[0] and "redis://" in lines[0], lines


def test_a_malformed_broker_list_is_one_line() -> None:
    r = run("tail", "--bootstrap-servers", "localhost", timeout=60)
    assert r.returncode == 2 and "invalid setting kafka.bootstrap_servers" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_version() -> None:
    import streamer

    r = run("--version", timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"streamer {streamer.__version__}"


def test_every_option_has_help_and_its_default() -> None:
    from streamer.ops.cli import build_parser
    from streamer.ops.reference import commands_of

    commands = commands_of(build_parser())
    assert len(commands) > 20
    for path, parser in commands:
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert action.help, (path, action.dest)
            shows = all(action.default is not v for v in (None, False, argparse.SUPPRESS))
            if shows and action.option_strings:
                shown = " ".join(parser._get_formatter()._format_action(action).split())
                assert "default: " in shown, (path, action.dest)
        if path and path[0] in ("worker", "doctor"):
            assert "STREAMER_KAFKA__BOOTSTRAP_SERVERS" in "".join(text.split())
    train_help = build_parser().parse_known_args(["train", "f", "--out", "o"])[0]
    assert not hasattr(train_help, "redis_url") and not hasattr(train_help, "model_name")


def test_train_writes_a_reproducible_artifact(tmp_path: Path) -> None:
    df = make_panel(8, 30, 40, seed=3, features=("temp",))
    data = tmp_path / "panel.parquet"
    df.to_parquet(data)
    versions = []
    for out in ("a", "b"):
        r = run(
            "train",
            str(data),
            "--out",
            str(tmp_path / out),
            "--epochs",
            "3",
            "--horizon",
            "4",
            "--hidden-size",
            "8",
        )
        assert r.returncode == 0, r.stderr
        spec = json.loads((tmp_path / out / "spec.json").read_text())
        versions.append(spec["version"])
        assert spec["spec"]["features"] == ["temp"] and spec["spec"]["horizon"] == 4
        assert spec["training"]["entities"] == 8
        assert (tmp_path / out / "model.safetensors").stat().st_size > 0
    assert versions[0] == versions[1], "same data and seed must give the same model"
    r = run(
        "train",
        str(data),
        "--out",
        str(tmp_path / "c"),
        "--epochs",
        "3",
        "--horizon",
        "4",
        "--hidden-size",
        "8",
        "--seed",
        "1",
    )
    assert json.loads((tmp_path / "c" / "spec.json").read_text())["version"] != versions[0]


def test_train_reads_other_column_names_and_infers_the_frequency(tmp_path: Path) -> None:
    df = make_panel(4, 30, 30, seed=8).rename(
        columns={"unique_id": "store", "ds": "month", "y": "sales"}
    )
    data = tmp_path / "sales.csv"
    df.to_csv(data, index=False)
    cols = ("--id-col", "store", "--time-col", "month", "--target-col", "sales")
    r = run("train", str(data), *cols, "--out", str(tmp_path / "m"), "--epochs", "2")
    assert r.returncode == 0, r.stderr
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())["spec"]
    assert spec["freq"] == pd.infer_freq(pd.DatetimeIndex(df["month"].iloc[:30])), spec
    r = run("train", str(data), "--out", str(tmp_path / "n"))  # the default names: missing
    assert r.returncode == 1 and "missing column(s) unique_id, ds, y" in r.stderr, r.stderr
    r = run("replay", str(data), "--id-col", "shop", "--time-col", "month", "--target-col", "sales")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "no column 'shop'" in lines[0], r.stderr
