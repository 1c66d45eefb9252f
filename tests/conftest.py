"""Shared fixtures: a small model artifact, synthetic panels, and the real Kafka and Redis servers.

The servers are started by ``deploy/local/services.sh`` on test ports (Kafka 19092, Redis 16379) the
first time a test asks for them; `make test` stops them afterwards. A service that cannot be started
fails the tests that need it: nothing is skipped.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from streamer.model import ModelSpec, SequenceModel
from streamer.model.artifact import save_artifact
from streamer.model.ensemble import merge

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "deploy" / "local" / "services.sh"
KAFKA_PORT = int(os.environ.get("TEST_KAFKA_PORT", "19092"))
REDIS_PORT = int(os.environ.get("TEST_REDIS_PORT", "16379"))
REDIS_CLUSTER_PORT = int(os.environ.get("TEST_REDIS_CLUSTER_PORT", "17000"))
SERVICES_DIR = Path.home() / ".cache" / "streamer" / "test-services"
#: The test CA that signed the TLS listeners' certificate, and one that signed nothing.
TLS_CA = SERVICES_DIR / "tls" / "ca.crt"
TLS_OTHER_CA = SERVICES_DIR / "tls" / "other-ca.crt"


def services_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KAFKA_PORT=str(KAFKA_PORT),
        KAFKA_CONTROLLER_PORT=str(KAFKA_PORT + 1),
        KAFKA_SASL_PORT=str(KAFKA_PORT + 2),
        KAFKA_SSL_PORT=str(KAFKA_PORT + 3),
        REDIS_PORT=str(REDIS_PORT),
        REDIS_CLUSTER_PORT=str(REDIS_CLUSTER_PORT),
        STREAMER_SERVICES_DIR=str(SERVICES_DIR),
    )
    return env


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """Start (or find running) the real Kafka and Redis; fail loudly if they cannot be started.
    A Kafka started here starts without the topics of earlier runs (KAFKA_FRESH); one that a test
    stops and starts again keeps this run's."""
    proc = subprocess.run(
        [str(SERVICES), "up"],
        env={**services_env(), "KAFKA_FRESH": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"could not start Kafka and Redis:\n{proc.stderr}\n{proc.stdout}", pytrace=False
        )
    return {
        "bootstrap": f"127.0.0.1:{KAFKA_PORT}",
        "sasl_bootstrap": f"127.0.0.1:{KAFKA_PORT + 2}",
        "ssl_bootstrap": f"127.0.0.1:{KAFKA_PORT + 3}",
        "redis_url": f"redis://127.0.0.1:{REDIS_PORT}/0",
    }


@pytest.fixture(scope="session")
def redis_cluster(services: dict[str, str]) -> dict[str, str]:
    """A real Redis Cluster of three masters (Debian's redis-server, `services.sh up
    redis-cluster`), and the services dict a worker uses to keep its states there. `make test`
    stops it with the other services."""
    proc = subprocess.run(
        [str(SERVICES), "up", "redis-cluster"],
        env=services_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"could not start a Redis Cluster:\n{proc.stderr}\n{proc.stdout}", pytrace=False
        )
    return {
        **services,
        "redis_url": f"redis://127.0.0.1:{REDIS_CLUSTER_PORT}/0",
        "redis_cluster": "1",
        "cluster_ports": ",".join(str(REDIS_CLUSTER_PORT + i) for i in range(3)),
    }


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_kind(request: pytest.FixtureRequest) -> dict[str, str]:
    """The services with states in a single Redis, then in a Redis Cluster: tests that take this
    run against both."""
    if request.param == "redis":
        return request.getfixturevalue("services")  # type: ignore[no-any-return]
    return request.getfixturevalue("redis_cluster")  # type: ignore[no-any-return]


@pytest.fixture
def ns() -> str:
    """A fresh namespace per test: topic, group and key prefixes never collide."""
    return f"t{uuid.uuid4().hex[:10]}"


def components(season: int, season2: int = 0) -> dict[str, object]:
    """A test model's season(s) and made-up smoothing."""
    if not season:
        return {}
    if season2:
        return {"season": season, "season2": season2, "smoothing": (0.3, 0.2, 0.4)}
    return {"season": season, "smoothing": (0.3, 0.2)}


def make_model(
    hidden: int = 16,
    layers: int = 2,
    horizon: int = 3,
    features: tuple[str, ...] = (),
    seed: int = 7,
    levels: tuple[int, ...] = (80, 95),
    season: int = 0,
    season2: int = 0,
) -> SequenceModel:
    """A model of random weights; a forecaster with prediction intervals at ``levels`` (their
    offsets made up), so every test of the served path carries them too; with ``season``, level
    and seasonal components in its state (and ``season2``, a second season's)."""
    torch.manual_seed(seed)
    spec = ModelSpec(
        hidden_size=hidden,
        num_layers=layers,
        horizon=horizon,
        features=features,
        feature_mean=tuple(0.5 for _ in features),
        feature_std=tuple(2.0 for _ in features),
        **made_up_intervals(levels, horizon),
        **components(season, season2),  # type: ignore[arg-type]
    )
    model = SequenceModel(spec)
    # Larger than default init weights, so states move far from zero and differences show.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model.eval()


def made_up_intervals(levels: tuple[int, ...], horizon: int) -> dict[str, Any]:
    """ModelSpec fields of intervals at ``levels``: asymmetric offsets widening with the step."""
    lo = tuple(
        tuple(-(0.2 + 0.1 * j) * (i + 1) for j in range(horizon)) for i in range(len(levels))
    )
    hi = tuple(
        tuple((0.3 + 0.05 * j) * (i + 1) for j in range(horizon)) for i in range(len(levels))
    )
    return {"levels": levels, "interval_lo": lo, "interval_hi": hi} if levels else {}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    save_artifact(make_model(), out, {"note": "random weights for tests"})
    return out


@pytest.fixture(scope="session")
def ensemble_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three random models of :func:`make_model`'s shape merged into one, with intervals."""
    out = tmp_path_factory.mktemp("ensemble")
    model = merge([make_model(seed=s, levels=()) for s in (1, 2, 3)])
    model.spec = replace(model.spec, **made_up_intervals((80, 95), model.spec.horizon))
    save_artifact(model, out, {"note": "random weights for tests"})
    return out


@pytest.fixture(scope="session")
def seasonal_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`make_model`'s shape with level and seasonal components over 4 steps in its state."""
    out = tmp_path_factory.mktemp("seasonal")
    save_artifact(make_model(season=4), out, {"note": "random weights for tests"})
    return out


@pytest.fixture(scope="session")
def two_season_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`make_model`'s shape with components over a season of 4 steps and one of 8."""
    out = tmp_path_factory.mktemp("two-seasons")
    save_artifact(make_model(season=4, season2=8), out, {"note": "random weights for tests"})
    return out


@pytest.fixture(scope="session")
def feature_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fmodel")
    save_artifact(make_model(features=("temp",)), out, {"note": "random weights for tests"})
    return out


def make_panel(
    n_entities: int, min_len: int, max_len: int, seed: int = 0, features: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Synthetic long-format panel: seasonal series of very different scales per entity."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_entities):
        t = int(rng.integers(min_len, max_len + 1))
        level = float(10 ** rng.uniform(-1, 3))
        idx = np.arange(t)
        y = level * (
            1
            + 0.3 * np.sin(idx * 2 * np.pi / 12 + rng.uniform(0, 6))
            + 0.1 * rng.standard_normal(t)
        )
        d = {
            "unique_id": f"e{i:04d}",
            "ds": pd.date_range("2020-01-01", periods=t, freq="D"),
            "y": y.round(6),
        }
        for f in features:
            d[f] = rng.normal(0.5, 2.0, t).round(6)
        frames.append(pd.DataFrame(d))
    return pd.concat(frames, ignore_index=True)


SECURE_REDIS_PORT = REDIS_PORT + 1
SECURE_REDIS_PASSWORD = "s3cret-pw-for-tests"


@pytest.fixture(scope="session")
def secure_redis(services: dict[str, str]):  # type: ignore[no-untyped-def]
    """A second real Redis that requires a password; stopped at the end of the session."""
    env = {
        **services_env(),
        "REDIS_PORT": str(SECURE_REDIS_PORT),
        "REDIS_PASSWORD": SECURE_REDIS_PASSWORD,
    }
    proc = subprocess.run(
        [str(SERVICES), "up", "redis"], env=env, capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        pytest.fail(f"could not start a Redis with a password:\n{proc.stderr}", pytrace=False)
    yield {"url": f"redis://127.0.0.1:{SECURE_REDIS_PORT}/0", "password": SECURE_REDIS_PASSWORD}
    subprocess.run([str(SERVICES), "down", "redis"], env=env, capture_output=True, timeout=60)


TLS_REDIS_PORT = REDIS_PORT + 2


@pytest.fixture(scope="session")
def tls_redis(services: dict[str, str]):  # type: ignore[no-untyped-def]
    """A second real Redis that also listens with TLS (the test CA's certificate); stopped at the
    end of the session. Yields its ``rediss://`` URL."""
    env = {
        **services_env(),
        "REDIS_PORT": str(TLS_REDIS_PORT),
        "REDIS_TLS_PORT": str(TLS_REDIS_PORT + 1),
    }
    proc = subprocess.run(
        [str(SERVICES), "up", "redis"], env=env, capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        pytest.fail(f"could not start a Redis with TLS:\n{proc.stderr}", pytrace=False)
    yield f"rediss://127.0.0.1:{TLS_REDIS_PORT + 1}/0"
    subprocess.run([str(SERVICES), "down", "redis"], env=env, capture_output=True, timeout=60)
