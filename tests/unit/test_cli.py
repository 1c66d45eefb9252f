"""The command line without services: argument errors, training, reproducibility."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
        (("replay", "x.csv", "--rate", "fast"), "expected a number"),
        (("state",), "required: state_command"),
        (("state", "get"), "required: entity"),
        (("tail", "--max", "0"), "must be positive"),
        (("tail", "--topic", "everything"), "invalid choice"),
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
        (("worker",), {"STREAMER_METRICS__PORT": "70000"}, "invalid setting metrics.port", 2),
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
