"""Per-entity level and seasonal components: the online updates, their offline twin, the fit, and
a forecaster that carries them (spec, training, streamed = offline)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streamer import scaling, seasonal
from streamer.errors import ConfigError, DataError
from streamer.model import ModelSpec
from streamer.train.data import split_series
from streamer.train.offline import offline_predict, series_inputs
from streamer.train.training import TrainConfig, train


def steps(y: np.ndarray, season: int, alpha: float, gamma: float) -> np.ndarray:
    comp = np.zeros((1, seasonal.width(season)))
    for v in y:
        comp = seasonal.update(comp, np.array([v]), alpha, gamma)[0]
    return comp[0]


@pytest.mark.parametrize(("alpha", "gamma"), [(0.02, 0.0), (0.3, 0.2), (0.9, 0.5)])
def test_a_fixed_seasonal_pattern_is_forecast_exactly_after_one_season(
    alpha: float, gamma: float
) -> None:
    pattern = np.array([3.0, -1.0, 0.5, -2.5, 0.0])  # sums to 0
    y = 100.0 + np.tile(pattern, 8)
    d, level, ahead = seasonal.expanding(y, 5, (alpha, gamma), 7)
    np.testing.assert_allclose(level[4:], 100.0, rtol=1e-12)
    np.testing.assert_allclose(d[5:], 100.0, rtol=1e-12)
    for t in range(4, len(y) - 7):  # from the end of the first season on
        np.testing.assert_allclose(ahead[t], y[t + 1 : t + 8], rtol=1e-12, err_msg=str(t))
    # Before that the level alone: the mean so far.
    np.testing.assert_allclose(ahead[2], np.full(7, y[:3].mean()))


def test_a_batch_of_entities_updates_as_each_alone() -> None:
    rng = np.random.default_rng(0)
    m, b = 6, 40
    series = [rng.normal(50, 10, int(rng.integers(1, 30))) for _ in range(b)]
    comp = np.zeros((b, seasonal.width(m)))
    # Entities at every phase: each gets its own number of events before the batch.
    for i, y in enumerate(series):
        for v in y[:-1]:
            comp[i : i + 1] = seasonal.update(comp[i : i + 1], np.array([v]), 0.3, 0.1)[0]
    last = np.array([y[-1] for y in series])
    out, d = seasonal.update(comp, last, 0.3, 0.1)
    for i, y in enumerate(series):
        np.testing.assert_array_equal(out[i], steps(y, m, 0.3, 0.1))
    assert d.shape == (b,)
    fut = seasonal.ahead(out, 2 * m + 1)  # a horizon past the season wraps
    np.testing.assert_array_equal(fut[:, : m + 1], fut[:, m:])


def test_expanding_is_the_online_updates_one_at_a_time() -> None:
    y = np.random.default_rng(1).gamma(2.0, 30.0, 50)
    d, level, ahead = seasonal.expanding(y, 4, (0.2, 0.3), 9)
    comp = np.zeros((1, 6))
    for t, v in enumerate(y):
        comp, dt = seasonal.update(comp, np.array([v]), 0.2, 0.3)
        assert (d[t], level[t]) == (dt[0], comp[0, 1])
        np.testing.assert_array_equal(ahead[t], seasonal.ahead(comp, 9)[0])


def hw_series(rng: np.random.Generator, t: int, walk: float, noise: float) -> np.ndarray:
    """A seasonal series (period 4) whose level is a random walk of step ``walk``."""
    level = 100 + np.cumsum(rng.normal(0, walk, t))
    return level + np.tile([8.0, -3.0, 5.0, -10.0], t // 4 + 1)[:t] + rng.normal(0, noise, t)


def test_fit_follows_the_level_of_a_random_walk_and_averages_noise() -> None:
    rng = np.random.default_rng(2)
    walks = [hw_series(rng, 120, walk=5.0, noise=0.2) for _ in range(10)]
    noisy = [hw_series(rng, 120, walk=0.0, noise=5.0) for _ in range(10)]
    unit = [scaling.expanding(y)[1] for y in walks + noisy]
    alpha_walk, _ = seasonal.fit(walks, 4, 4, unit[:10])
    alpha_noisy, gamma_noisy = seasonal.fit(noisy, 4, 4, unit[10:])
    assert alpha_walk >= 0.5 and alpha_noisy <= 0.1, (alpha_walk, alpha_noisy)
    assert gamma_noisy <= 0.1
    assert (alpha_walk, alpha_noisy) in [(a, a2) for a in seasonal.ALPHAS for a2 in seasonal.ALPHAS]


@pytest.mark.parametrize(
    ("freq", "season"),
    [("MS", 12), ("QS-DEC", 4), ("W-SUN", 52), ("D", 7), ("h", 24), ("2h", 24), ("min", 0)],
)
def test_season_of_a_frequency(freq: str, season: int) -> None:
    assert seasonal.season_of(freq) == season


def test_the_spec_carries_its_components_and_refuses_what_cannot_have_them() -> None:
    spec = ModelSpec(horizon=3, season=12, smoothing=(0.3, 0.1))
    assert spec.components == 14 and ModelSpec().components == 0
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert "season" not in ModelSpec().to_dict()  # (versions of older models stay the same)
    for bad in (
        {"season": 1},
        {"season": 4, "smoothing": (1.5, 0.1)},
        {"season": 4, "task": "classify", "classes": ("a", "b")},
        {"season": 4, "scaling": "none"},
    ):
        with pytest.raises(ConfigError):
            ModelSpec(**bad)  # type: ignore[arg-type]


def ar_panel(n: int, t: int, seed: int) -> pd.DataFrame:
    """Seasonal series (period 12) of very different scales whose deviations are an AR(1) of
    coefficient -0.8: what the components cannot forecast and a network can."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        scale = float(10 ** rng.uniform(0, 3))
        e = np.zeros(t)
        for j in range(1, t):
            e[j] = -0.8 * e[j - 1] + rng.normal(0, 0.1)
        season = 0.3 * np.sin(np.arange(t) * 2 * np.pi / 12 + rng.uniform(0, 6))
        y = scale * (1 + season + e)
        ds = pd.date_range("2000-01-01", periods=t, freq="MS")
        frames.append(pd.DataFrame({"unique_id": f"s{i:03d}", "ds": ds, "y": y}))
    return pd.concat(frames, ignore_index=True)


def test_a_seasonal_forecaster_trains_serves_offline_and_beats_its_components_alone() -> None:
    df = ar_panel(32, 72, seed=4)
    cfg = TrainConfig(horizon=2, hidden_size=16, epochs=40, holdout=2, season=12, levels=())
    result = train(df, cfg)
    model, spec = result.model, result.model.spec
    assert spec.season == 12 and spec.smoothing[0] in seasonal.ALPHAS
    # The refit keeps the components of the model early stopping chose (its intervals' basis).
    assert result.chosen is not None and result.chosen is not model
    assert (result.chosen.spec.season, result.chosen.spec.smoothing) == (12, spec.smoothing)
    assert spec.smoothing[1] in seasonal.GAMMAS
    errors, alone = [], []
    for s in split_series(df):
        y, hist = s.y[-2:], s.__class__(s.unique_id, s.ds[:-2], s.y[:-2], s.features[:-2])
        fc = offline_predict(model, hist)[0][-1]
        start = series_inputs(hist, spec)[1][-1]
        errors.append(np.abs(fc - y).mean() / np.abs(y).mean())
        alone.append(np.abs(start - y).mean() / np.abs(y).mean())
    # The network learnt what the components miss: the deviations' alternation.
    assert np.mean(errors) < 0.8 * np.mean(alone), (np.mean(errors), np.mean(alone))


def test_the_refit_keeps_the_chosen_models_components(monkeypatch: pytest.MonkeyPatch) -> None:
    """The intervals are calibrated on the model early stopping chose: the refit must not fit its
    own smoothing (here each fit would give another pair) nor decide its own season."""
    from streamer.train import training

    pairs = iter([(0.3, 0.1), (0.9, 0.5)])
    monkeypatch.setattr(training, "_smoothing", lambda *a: next(pairs))
    df = ar_panel(8, 40, seed=1)
    result = train(df, TrainConfig(horizon=2, hidden_size=8, epochs=3, holdout=2, season=12))
    assert result.chosen is not None and result.chosen is not result.model
    assert result.chosen.spec.smoothing == result.model.spec.smoothing == (0.3, 0.1)
    assert result.summary["components"] == {"season": 12, "alpha": 0.3, "gamma": 0.1}


def test_state_reset_starts_the_components_over_too() -> None:
    from streamer.ops.states import _zeroed
    from streamer.state.codec import StateRecord, decode, encode

    rec = StateRecord(
        h=np.ones((2, 4), np.float32),
        c=np.ones((2, 4), np.float32),
        model_version="v1",
        step=40,
        partition=1,
        offset=99,
        updated_ms=1,
        count=40.0,
        mean=3.0,
        var=1.0,
        comp=np.array([40.0, 12.5, -2.0, 2.0]),
    )
    again = decode(encode(_zeroed(rec)))
    assert again.comp.tolist() == [0.0, 0.0, 0.0, 0.0] and again.step == 0
    assert (again.partition, again.offset) == (1, 99)  # the fence stays


def test_a_season_longer_than_every_series_is_a_data_error() -> None:
    df = pd.DataFrame(
        {"unique_id": "a", "ds": pd.date_range("2020-01-01", periods=10, freq="D"), "y": 1.0}
    )
    with pytest.raises(DataError, match="longer than a season"):
        train(df, TrainConfig(horizon=2, epochs=1, season=12))
    assert train(df, TrainConfig(horizon=2, epochs=1, levels=())).model.spec.season == 0  # (auto)
    df["label"] = "a"
    with pytest.raises(ConfigError, match="for forecasters"):
        train(df, TrainConfig(task="classify", label="label", season=4))


def two_seasons(rng: np.random.Generator, weeks: int, noise: float = 0.0) -> np.ndarray:
    """A 'day' of 4 steps and a 'week' of 3 days: a daily pattern, and days that differ."""
    day = np.array([6.0, -2.0, 3.0, -7.0])
    week = np.array([[4.0, 1.0, 2.0, 3.0], [-3.0, -1.0, -2.0, 0.0], [0.0, 0.5, -1.0, -3.5]])
    t = 12 * weeks
    y = 100.0 + np.tile(day, 3 * weeks) + np.tile(week.ravel(), weeks)
    return y + rng.normal(0, noise, t)


def test_a_second_season_learns_what_each_day_of_the_week_adds() -> None:
    y = two_seasons(np.random.default_rng(0), 80)
    _, _, one = seasonal.expanding(y, 4, (0.1, 0.2), 12)
    _, _, two = seasonal.expanding(y, 4, (0.1, 0.2, 0.3), 12, season2=12)
    err = {
        k: np.abs(f[t] - y[t + 1 : t + 13]).mean()
        for k, f in (("one", one), ("two", two))
        for t in [len(y) - 13]
    }
    assert err["two"] < 1e-3 < 1.0 < err["one"], err  # (the week is in the forecast: exactly)
    # Until the first season is known the level alone, as with one season.
    np.testing.assert_array_equal(two[:3], one[:3])


@pytest.mark.parametrize(("m", "m2"), [(6, 0), (3, 12)])
def test_a_batch_of_entities_updates_as_each_alone_with_one_or_two_seasons(m: int, m2: int) -> None:
    rng = np.random.default_rng(5)
    sm = (0.3, 0.1, 0.2) if m2 else (0.3, 0.1)
    series = [rng.normal(50, 10, int(rng.integers(1, 40))) for _ in range(40)]
    comp = np.zeros((len(series), seasonal.width(m, m2)))
    for i, y in enumerate(series):
        for v in y[:-1]:
            comp[i : i + 1] = seasonal.update(
                comp[i : i + 1], np.array([v]), *seasonal.params(sm), season=m
            )[0]
    last = np.array([y[-1] for y in series])
    out = seasonal.update(comp, last, *seasonal.params(sm), season=m)[0]
    for i, y in enumerate(series):
        _, level, fut = seasonal.expanding(y, m, sm, 5, season2=m2)
        assert out[i, 1] == level[-1]
        np.testing.assert_array_equal(seasonal.ahead(out[i : i + 1], 5, m)[0], fut[-1])


def test_fit_chooses_a_second_seasons_delta_and_beats_one_season() -> None:
    rng = np.random.default_rng(3)
    series = [two_seasons(rng, 30, noise=1.0) * rng.uniform(0.5, 5) for _ in range(6)]
    unit = [scaling.expanding(y)[1] for y in series]
    one = seasonal.fit(series, 4, 4, unit)
    two = seasonal.fit(series, 4, 4, unit, season2=12)
    assert len(one) == 2 and len(two) == 3 and two[2] in seasonal.DELTAS

    def error(sm: tuple[float, ...], m2: int) -> float:
        out = []
        for y in series:
            fut = seasonal.expanding(y, 4, sm, 4, season2=m2)[2]
            out.append(np.mean([np.abs(fut[t] - y[t + 1 : t + 5]).mean() for t in range(24, 356)]))
        return float(np.mean(out))

    assert error(two, 12) < 0.5 * error(one, 0)


def test_the_spec_carries_a_second_season_and_refuses_a_wrong_one() -> None:
    spec = ModelSpec(horizon=3, season=24, season2=168, smoothing=(0.3, 0.1, 0.2))
    assert spec.components == 2 + 24 + 168
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert "season2" not in ModelSpec(horizon=3, season=12, smoothing=(0.3, 0.1)).to_dict()
    for bad, why in (
        ({"season": 24, "season2": 100, "smoothing": (0.3, 0.1, 0.2)}, "multiple"),
        ({"season": 24, "season2": 24, "smoothing": (0.3, 0.1, 0.2)}, "longer than the first"),
        ({"season": 24, "season2": 168, "smoothing": (0.3, 0.1)}, "delta"),
        ({"season2": 168}, "needs a first"),
    ):
        with pytest.raises(ConfigError, match=why):
            ModelSpec(**bad)  # type: ignore[arg-type]


def hourly_panel(n: int, days: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = 24 * days
    hour = np.arange(t) % 24
    weekend = (np.arange(t) // 24) % 7 >= 5
    frames = []
    for i in range(n):
        y = 50 + 30 * np.sin(2 * np.pi * hour / 24) * np.where(weekend, 0.2, 1.0)
        y = (y + rng.normal(0, 2, t)) * rng.uniform(1, 10)
        ds = pd.date_range("2021-01-04", periods=t, freq="h")
        frames.append(pd.DataFrame({"unique_id": f"s{i}", "ds": ds, "y": y}))
    return pd.concat(frames, ignore_index=True)


def test_a_forecaster_with_a_second_season_trains_and_serves_it_offline() -> None:
    df = hourly_panel(4, 35, seed=2)
    cfg = TrainConfig(horizon=4, hidden_size=8, epochs=2, holdout=4, season2=168, levels=())
    result = train(df, cfg)  # (the first season: auto, hourly 24)
    spec = result.model.spec
    assert (spec.season, spec.season2, len(spec.smoothing)) == (24, 168, 3)
    assert result.summary["components"]["season2"] == 168
    assert result.summary["components"]["delta"] in seasonal.DELTAS
    s = split_series(df)[0]
    start = series_inputs(s, spec)[1]
    want = seasonal.expanding(s.y, 24, spec.smoothing, 4, season2=168)[2]
    np.testing.assert_array_equal(start, want)
    assert offline_predict(result.model, s)[0].shape == (len(s.y), 4)


@pytest.mark.parametrize(
    ("cfg", "error", "why"),
    [
        ({"season": 24, "season2": 100}, ConfigError, "multiple"),
        ({"season": 0, "season2": 168}, ConfigError, "needs a first"),
        ({"season": None, "season2": 50}, DataError, "the data's season is 24: a second season"),
        ({"season": None, "season2": 168, "scaling": "none"}, DataError, "need --scaling entity"),
    ],
)
def test_a_wrong_second_season_is_refused_before_training(
    cfg: dict[str, object], error: type[Exception], why: str
) -> None:
    df = hourly_panel(2, 20, seed=1)
    with pytest.raises(error, match=why):
        train(df, TrainConfig(horizon=2, epochs=1, **cfg))  # type: ignore[arg-type]


@pytest.mark.parametrize(("m", "m2", "skip"), [(4, 0, 0), (4, 0, 3), (3, 12, 2)])
def test_fit_scores_every_set_as_the_online_updates_would(m: int, m2: int, skip: int) -> None:
    """The fit's fast pass (one position for all rows, only the touched columns) scores every
    set as :func:`seasonal.expanding` (the serving arithmetic) forecasts, ragged series too."""
    rng = np.random.default_rng(7)
    series = [two_seasons(rng, 5, noise=2.0)[: int(rng.integers(20, 60))] for _ in range(3)]
    unit = [scaling.expanding(y)[1] for y in series]
    h = 3
    sets, score = seasonal.fit_scores(series, m, h, unit, skip=skip, season2=m2)
    for sm, got in zip(sets, score, strict=True):
        per = []
        for y, u in zip(series, unit, strict=True):
            fut = seasonal.expanding(y, m, sm if m2 else sm[:2], h, season2=m2)[2]
            e = [
                np.abs(fut[t, : len(y) - t - 1] - y[t + 1 : t + 1 + h]) / u[t]
                for t in range(max(m, m2) + skip, len(y) - 1)
            ]
            per.append(np.concatenate(e).mean())
        # (the same arithmetic; the errors are summed in another order)
        np.testing.assert_allclose(got, np.mean(per), rtol=1e-12, err_msg=str(sm))


def test_the_smoothing_is_fitted_on_a_seeded_sample_of_a_large_panel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streamer.train import training

    seen: list[int] = []

    def fit(ys: list[np.ndarray], *args: object, **kw: object) -> tuple[float, float]:
        seen.append(len(ys))
        return (0.3, 0.1)

    monkeypatch.setattr(training, "FIT_SERIES", 5)
    monkeypatch.setattr(seasonal, "fit", fit)
    df = ar_panel(12, 40, seed=3)
    cfg = TrainConfig(horizon=2, hidden_size=4, epochs=1, season=12, refit=False, levels=())
    assert train(df, cfg).model.spec.smoothing == (0.3, 0.1)
    assert seen == [5]
