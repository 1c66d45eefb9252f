"""Training: reproducible for a seed, for every cell and kind of model; offline passes agree."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from streamer.errors import DataError
from streamer.train.data import split_series
from streamer.train.offline import offline_predict, offline_windows, window_bounds
from streamer.train.training import TrainConfig, train
from tests.conftest import make_panel


def labelled_panel(n: int = 24, t: int = 12, seed: int = 0) -> pd.DataFrame:
    """Sequences whose class is whether they rise or fall, with an end marker every 5 events."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        up = i % 2 == 0
        y = np.cumsum(rng.normal(0.6 if up else -0.6, 1.0, t))
        frames.append(
            pd.DataFrame(
                {
                    "unique_id": f"s{i:03d}",
                    "ds": pd.date_range("2021-01-01", periods=t, freq="h"),
                    "y": y,
                    "end": (np.arange(t) % 5 == 4).astype(float),
                    "label": "up" if up else "down",
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


#: a small classifier trained for a few epochs: these tests check reproducibility and windows,
#: not learning, so a model still at chance is no error here
TINY: dict[str, Any] = dict(task="classify", label="label", hidden_size=8, fail_at_chance=False)

CONFIGS = {
    "lstm-forecast": TrainConfig(horizon=3, hidden_size=8, epochs=3, holdout=2),
    "gru-forecast": TrainConfig(cell="gru", horizon=3, hidden_size=8, epochs=3),
    "rnn-classify": TrainConfig(**TINY, cell="rnn", epochs=3, noise=0.1),
    "lstm-window": TrainConfig(**TINY, num_layers=1, epochs=3, window=6),
}


def data_for(name: str) -> pd.DataFrame:
    return labelled_panel() if "forecast" not in name else make_panel(12, 20, 30, seed=3)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_training_is_reproducible_for_a_seed(name: str) -> None:
    df = data_for(name)
    a = train(df, CONFIGS[name]).model.state_dict()
    b = train(df, CONFIGS[name]).model.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = train(df, TrainConfig(**{**CONFIGS[name].__dict__, "seed": 1})).model.state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a), "the seed changes nothing"


def test_a_classifier_learns_its_classes_and_predicts_probabilities() -> None:
    df = labelled_panel(n=40)
    cfg = TrainConfig(task="classify", label="label", hidden_size=16, num_layers=1, epochs=40)
    result = train(df, cfg)
    assert result.model.spec.classes == ("down", "up")
    right = 0
    for s in split_series(df, ["end"], "label"):
        probs = offline_predict(result.model, s)[0]
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
        right += result.model.spec.classes[int(probs[-1].argmax())] == (s.labels or [])[-1]
    assert right >= 34  # 40 easy sequences: far above chance


def test_a_small_classification_set_gets_an_ensemble_by_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from streamer.ops.cli.parser import build_parser
    from streamer.train.config import SMALL_CLASSIFIER_EVENTS, SMALL_CLASSIFIER_MEMBERS, resolve

    step = TrainConfig(task="classify", label="label")
    small = labelled_panel(n=10)
    large = pd.DataFrame({"unique_id": np.repeat(np.arange(1000), 101), "y": 0.0, "label": "a"})
    assert len(small) <= SMALL_CLASSIFIER_EVENTS < len(large)
    assert resolve(small, step).members == SMALL_CLASSIFIER_MEMBERS
    assert resolve(large, step).members == 1
    assert resolve(small, TrainConfig(**{**step.__dict__, "members": 2})).members == 2
    assert resolve(small, TrainConfig(**{**step.__dict__, "window": 4})).members == 1
    assert resolve(small, TrainConfig()).members == 1  # (forecasters)
    result = train(small, TrainConfig(**{**TINY, "epochs": 2}))
    assert result.model.spec.members == SMALL_CLASSIFIER_MEMBERS
    assert [m["seed"] for m in result.summary["members"]] == list(range(SMALL_CLASSIFIER_MEMBERS))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    helps = " ".join(capsys.readouterr().out.split())
    rule = (
        f"{SMALL_CLASSIFIER_MEMBERS} for a step classifier of at most {SMALL_CLASSIFIER_EVENTS:,}"
    )
    assert rule in helps


def test_hourly_forecasters_validate_on_four_weeks_and_calendar_inputs_are_asked_for() -> None:
    from streamer.errors import ConfigError
    from streamer.train.config import CALIBRATION_DAYS, resolve

    hourly = make_panel(2, 200 * 24, 200 * 24, seed=4)
    hours = hourly.groupby("unique_id").cumcount()
    hourly["ds"] = pd.Timestamp("2021-01-01") + pd.to_timedelta(hours, unit="h")
    daily = make_panel(2, 400, 400, seed=4)
    cfg = resolve(hourly, TrainConfig(horizon=24))
    assert cfg.val_points == CALIBRATION_DAYS * 24  # (not 400 / 2 series = 200 hours)
    assert resolve(daily, TrainConfig(horizon=7)).val_points == 80  # 200 each, at most a fifth
    assert cfg.calendar == ()  # (asked for, not by default)
    with pytest.raises(DataError, match="unknown calendar input 'week'"):
        resolve(daily, TrainConfig(calendar=("week",)))
    with pytest.raises(ConfigError, match="calendar inputs are for"):
        resolve(labelled_panel(n=4), TrainConfig(next="label", calendar=("hour",)))
    short = hourly[hours < 30 * 24]
    cal = TrainConfig(horizon=6, hidden_size=8, epochs=2, calendar=("hour", "weekday"))
    model = train(short, cal).model
    assert model.spec.calendar == ("hour", "weekday") and model.spec.input_size == 5
    (s,) = split_series(short[short.unique_id == "e0000"])
    served, h, _ = offline_predict(model, s)
    assert np.isfinite(served).all() and np.isfinite(h).all()
    with pytest.raises(ConfigError, match="calendar inputs are for step forecasters"):
        train(labelled_panel(n=4), TrainConfig(**TINY, window=4, calendar=("hour",)))


def test_windows_close_after_n_events_or_at_the_end_marker() -> None:
    df = labelled_panel(n=2, t=12)
    cfg = TrainConfig(**TINY, num_layers=1, epochs=2, window=4)
    spec = train(df, cfg).model.spec
    s = split_series(df, ["end"])[0]
    assert window_bounds(s, spec) == [(0, 4), (4, 8), (8, 12)]
    marked = TrainConfig(**{**cfg.__dict__, "window_end": "end"})
    model = train(df, marked).model
    assert model.spec.input_features == ()  # the marker is not an input
    # the marker is at events 5 and 10 (rows 4 and 9); windows also close after 4 events
    assert window_bounds(s, model.spec) == [(0, 4), (4, 5), (5, 9), (9, 10)]
    assert [row for row, _ in offline_windows(model, s)] == [3, 4, 8, 9]
