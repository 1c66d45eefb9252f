"""An honest evaluation: early stopping then a refit on every point, the training span in the
artifact, and ``streamer evaluate`` refusing a model trained on what it would score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamer.errors import TrainingFailed
from streamer.model.artifact import SPAN, read_span, save_artifact
from streamer.train.checks import seen_in_training, training_span
from streamer.train.training import TrainConfig, train
from tests.conftest import make_panel
from tests.unit.test_cli import run
from tests.unit.test_training import labelled_panel

QUICK = dict(hidden_size=8, num_layers=1, horizon=3, epochs=40, patience=2, warmup=1)


def test_early_stopping_is_followed_by_a_refit_on_every_point() -> None:
    df = make_panel(6, 30, 40, seed=4)
    chosen = train(df, TrainConfig(**QUICK, refit=False))  # type: ignore[arg-type]
    refit = train(df, TrainConfig(**QUICK))  # type: ignore[arg-type]
    r = refit.summary["refit"]
    assert "refit" not in chosen.summary
    assert r["epochs_run_to_choose"] == chosen.summary["epochs_run"]
    assert 1 <= r["epochs"] <= r["epochs_run_to_choose"]
    assert refit.summary["epochs_run"] == r["epochs"]  # trained again for the epochs chosen
    assert refit.summary["best_val_loss"] == chosen.summary["best_val_loss"]
    assert refit.summary["config"]["refit"] is True
    a = chosen.model.state_dict()
    b = refit.model.state_dict()
    assert any(not np.allclose(a[k].numpy(), b[k].numpy()) for k in a)


def test_a_refit_that_learnt_nothing_leaves_the_chosen_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streamer.ops.cli.modelling import _how_trained
    from streamer.train import training

    learnt = training.check_learnt

    def refit_fails(model, series, cfg):  # type: ignore[no-untyped-def]
        if not cfg.refit:  # (the refit: no held-out sequences, its epochs chosen)
            raise TrainingFailed("the classifier learnt nothing: (made to fail)")
        learnt(model, series, cfg)

    monkeypatch.setattr(training, "check_learnt", refit_fails)
    df = labelled_panel(n=20, t=8)
    cfg = TrainConfig(task="classify", label="label", hidden_size=8, num_layers=1, epochs=3)
    one = train(df, TrainConfig(**{**cfg.__dict__, "members": 1}))
    assert one.model is one.chosen and "refit" not in one.summary
    assert "made to fail" in one.summary["refit_failed"]
    assert "the model early stopping chose is served" in _how_trained(one.summary)
    ens = train(df, TrainConfig(**{**cfg.__dict__, "members": 2}))  # (every member's refit fails)
    assert ens.model.spec.members == 2
    assert all("made to fail" in m["refit_failed"] for m in ens.summary["members"])
    assert "learnt nothing for 2 of them" in _how_trained(ens.summary)
    monkeypatch.setattr(training, "check_learnt", learnt)
    assert "refit_failed" not in train(df, TrainConfig(**{**cfg.__dict__, "members": 1})).summary


def test_no_validation_no_refit() -> None:
    df = labelled_panel(n=8, t=6)
    cfg = TrainConfig(
        task="classify",
        label="label",
        hidden_size=8,
        num_layers=1,
        epochs=3,
        val_fraction=0.0,
        members=1,
    )
    assert "refit" not in train(df, cfg).summary


def test_the_span_says_what_each_entity_was_trained_on(tmp_path: Path) -> None:
    df = make_panel(5, 20, 30, seed=2)
    result = train(df, TrainConfig(**{**QUICK, "epochs": 2}, holdout=3))  # type: ignore[arg-type]
    span = result.span
    assert span is not None and len(span) == 5
    for uid, g in df.groupby("unique_id"):
        row = span[span.unique_id == uid].iloc[0]
        assert row.points == len(g) - 3 and pd.Timestamp(row.last_ds) == g["ds"].iloc[-4]
    save_artifact(result.model, tmp_path / "m", result.summary, span)
    pd.testing.assert_frame_equal(read_span(tmp_path / "m"), span)
    save_artifact(result.model, tmp_path / "m", result.summary)  # none: a stale one goes
    assert not (tmp_path / "m" / SPAN).exists() and read_span(tmp_path / "m") is None


def _series(df: pd.DataFrame) -> list:  # type: ignore[type-arg]
    from streamer.train.data import split_series

    return split_series(df, [])


def test_a_forecaster_has_seen_the_held_out_points_unless_trained_with_a_holdout() -> None:
    df = make_panel(4, 20, 20, seed=1)
    without = training_span(_series(df))
    with_holdout = training_span(
        _series(df[df.groupby("unique_id").cumcount(ascending=False) >= 3])
    )
    assert len(seen_in_training(without, df, 3)) == 4
    assert seen_in_training(with_holdout, df, 3) == []
    assert len(seen_in_training(with_holdout, df, 4)) == 4  # a longer horizon reaches back
    # A panel whose entities end at different times: each is checked against its own end.
    ragged = pd.concat([df[df.unique_id != "e0000"], df[df.unique_id == "e0000"].iloc[:-5]])
    span = training_span(
        _series(ragged[ragged.groupby("unique_id").cumcount(ascending=False) >= 3])
    )
    assert seen_in_training(span, ragged, 3) == []


def test_a_classifier_has_seen_the_same_sequences_only() -> None:
    train_set, test_set = labelled_panel(n=6, t=8, seed=0), labelled_panel(n=6, t=8, seed=1)
    span = training_span(_series(train_set))
    assert {u for u, _ in seen_in_training(span, train_set, None)} == set(train_set.unique_id)
    assert seen_in_training(span, test_set, None) == []  # same ids, other values


def test_evaluate_refuses_a_model_trained_on_the_held_out_points(tmp_path: Path) -> None:
    df = make_panel(4, 20, 24, seed=3)
    data = tmp_path / "data.csv"
    df.to_csv(data, index=False)
    result = train(df, TrainConfig(**{**QUICK, "epochs": 2}))  # type: ignore[arg-type]
    save_artifact(result.model, tmp_path / "m", result.summary, result.span)
    r = run("evaluate", str(data), "--model", str(tmp_path / "m"), timeout=120)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "trained on the held-out points of 4 of the 4" in lines[0]
    assert "--holdout 3" in lines[0] and "--allow-seen" in lines[0]
    # held out for one origin is not held out for three: they reach 3 x 3 points back
    held = train(df, TrainConfig(**{**QUICK, "epochs": 2, "holdout": 3}))  # type: ignore[arg-type]
    save_artifact(held.model, tmp_path / "h", held.summary, held.span)
    r = run("evaluate", str(data), "--model", str(tmp_path / "h"), "--origins", "3", timeout=120)
    assert r.returncode == 1 and "--holdout 9" in r.stderr, r.stderr


@pytest.mark.parametrize("flag", ["--refit", "--no-refit"])
def test_train_says_how_it_chose_its_epochs(tmp_path: Path, flag: str) -> None:
    df = make_panel(4, 20, 24, seed=3)
    data = tmp_path / "data.csv"
    df.to_csv(data, index=False)
    out = tmp_path / "m"
    args = ["train", str(data), "--out", str(out), "--horizon", "3", "--epochs", "4", flag]
    r = run(*args, "--hidden-size", "8", "--layers", "1", timeout=180)
    assert r.returncode == 0, r.stderr
    assert ("then refit on all of them" in r.stdout) == (flag == "--refit"), r.stdout
    assert read_span(out) is not None


def test_a_classifier_that_learnt_nothing_is_an_error() -> None:
    df = labelled_panel(n=12, t=8)
    df["label"] = np.where(np.arange(len(df)) // 8 % 2 == 0, "a", "b")  # labels of no pattern
    rng = np.random.default_rng(0)
    df["y"] = rng.standard_normal(len(df))  # nothing to learn the labels from
    cfg = TrainConfig(task="classify", label="label", hidden_size=8, num_layers=1, epochs=2)
    with pytest.raises(TrainingFailed, match=r"learnt nothing.*majority class: 0\.500"):
        train(df, cfg)
    train(df, TrainConfig(**{**cfg.__dict__, "fail_at_chance": False}))  # (allowed)


def test_classical_baselines_forecast_every_entity_from_its_own_history() -> None:
    from streamer.train.baselines import classical_forecasts
    from streamer.train.scores import forecast_scores

    t = np.arange(48)
    rows = [
        pd.DataFrame(
            {"unique_id": f"s{i}", "ds": t, "y": 10 * (i + 1) + np.sin(2 * np.pi * t / 12)}
        )
        for i in range(3)
    ]
    short = pd.DataFrame({"unique_id": "short", "ds": range(6), "y": 1.0})  # 2 points of history
    df = pd.concat([*rows, short])
    history = df[df.groupby("unique_id").cumcount(ascending=False) >= 4]
    got = classical_forecasts(history, horizon=4, season=12, levels=(80, 95))
    assert set(got) == {"auto_ets", "theta"} and set(got["theta"]) == {"s0", "s1", "s2", "short"}
    for uid in ("s0", "s1", "s2"):
        actual = df[df.unique_id == uid]["y"].to_numpy()[-4:]
        hist = history[history.unique_id == uid]["y"].to_numpy()
        for method in got:
            f = got[method][uid].mean
            assert f.shape == (4,) and hist.min() * 0.8 < f.min() and f.max() < hist.max() * 1.2
            (lo80, hi80), (lo95, hi95) = (got[method][uid].bounds[v] for v in (80, 95))
            assert np.all(lo95 <= lo80) and np.all(lo80 <= f) and np.all(f <= hi80)
            assert np.all(hi80 <= hi95)
        assert forecast_scores(hist, actual, got["auto_ets"][uid].mean, 12).smape < 1  # the season
    assert classical_forecasts(history, horizon=4, season=12)["theta"]["s0"].bounds == {}
    # the entities fitted in two processes or in this one: the same forecasts, bit for bit
    alone = classical_forecasts(history, horizon=4, season=12, levels=(80,), jobs=1)
    apart = classical_forecasts(history, horizon=4, season=12, levels=(80,), jobs=2)
    for method in alone:
        for uid, f in alone[method].items():
            np.testing.assert_array_equal(f.mean, apart[method][uid].mean)
            np.testing.assert_array_equal(f.bounds[80][0], apart[method][uid].bounds[80][0])


@pytest.mark.parametrize(
    ("name", "rows", "entities", "freq"),
    [
        ("aus-retail", 64532, 152, "MS"),
        ("prison", 3072, 64, "QS-OCT"),
        ("pedestrian", 66037, 4, None),
    ],
)
def test_the_bundled_panels_are_long_format(
    tmp_path: Path, name: str, rows: int, entities: int, freq: str | None
) -> None:
    out = tmp_path / f"{name}.csv"
    r = run("dataset", name, "--out", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out, parse_dates=["ds"])
    assert list(df.columns) == ["unique_id", "ds", "y"]
    assert (len(df), df.unique_id.nunique()) == (rows, entities)
    one = df[df.unique_id == df.unique_id.iloc[0]].ds
    if freq:
        assert pd.infer_freq(pd.DatetimeIndex(one)) == freq
    else:  # hourly, with a few hours missing as published
        assert (one.diff().dropna() == pd.Timedelta("1h")).mean() > 0.99


@pytest.mark.parametrize(
    ("name", "sequences", "channels", "lengths", "classes"),
    [
        ("italy-power-demand-train", 67, 1, (24, 24), 2),
        ("osuleaf-test", 242, 1, (427, 427), 6),
        ("basic-motions-train", 40, 6, (100, 100), 4),
        ("japanese-vowels-test", 370, 12, (7, 29), 9),
    ],
)
def test_the_classification_sets_are_long_format_on_their_published_splits(
    tmp_path: Path,
    name: str,
    sequences: int,
    channels: int,
    lengths: tuple[int, int],
    classes: int,
) -> None:
    out = tmp_path / f"{name}.csv"
    r = run("dataset", name, "--out", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out, parse_dates=["ds"])
    dims = [f"dim_{c}" for c in range(1, channels)]
    assert list(df.columns) == ["unique_id", "ds", "y", *dims, "label"]
    sizes = df.groupby("unique_id").size()
    assert len(sizes) == sequences and (sizes.min(), sizes.max()) == lengths
    assert df.unique_id.iloc[0] == f"{name.rsplit('-', 1)[1]}-0001"
    assert df.groupby("unique_id").label.nunique().max() == 1  # one class per sequence
    assert df.label.nunique() == classes and df[["y", *dims]].notna().all().all()
    one = df[df.unique_id == df.unique_id.iloc[0]].ds
    assert (one.diff().dropna() == pd.Timedelta("1h")).all()
