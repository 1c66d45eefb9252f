"""Prediction intervals: calibration, the served layout, the JSON, the spec, training."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.api import OnlinePredictor
from streamer.errors import ConfigError
from streamer.model import ModelSpec, intervals
from streamer.model.artifact import save_artifact
from streamer.schemas import Event, Prediction
from streamer.serve.columns import EventColumns
from streamer.serve.outputs import Outputs, OutputShape, encode_outputs
from streamer.train.data import split_series
from streamer.train.offline import offline_predict, series_inputs
from streamer.train.training import TrainConfig, train
from tests.conftest import made_up_intervals, make_model, make_panel


def test_calibrated_offsets_cover_their_level_of_fresh_residuals() -> None:
    rng = np.random.default_rng(0)
    # step 1 unbiased and narrow, step 2 biased upwards and skewed
    cal = [rng.normal(0, 1, 2000), rng.gamma(2.0, 1.0, 2000)]
    lo, hi = intervals.calibrate(cal, [80, 95])
    fresh = [rng.normal(0, 1, 200_000), rng.gamma(2.0, 1.0, 200_000)]
    for i, level in enumerate((80, 95)):
        for j, r in enumerate(fresh):
            covered = np.mean((r >= lo[i][j]) & (r <= hi[i][j]))
            assert abs(covered - level / 100) < 0.02, (level, j, covered)
            # each tail holds about half the miss rate (signed quantiles, not |r|)
            assert abs(np.mean(r < lo[i][j]) - (1 - level / 100) / 2) < 0.015
    assert lo[1][0] < lo[0][0] < 0 < hi[0][0] < hi[1][0]  # 95% wider than 80%, both ways
    assert lo[0][1] > 0  # the skewed step's interval sits above its forecast


def test_the_finite_sample_correction_never_narrows_and_too_few_residuals_give_none() -> None:
    r = [np.arange(1.0, 21.0)]  # 20 residuals: the 90% upper rank is ceil(21 * 0.9) = 19
    lo, hi = intervals.calibrate(r, [80])
    assert (lo, hi) == (((2.0,),), ((19.0,),))
    assert intervals.calibrate([np.arange(19.0)], [80]) == ((), ())
    assert intervals.calibrate(r, []) == ((), ())
    hi99 = intervals.calibrate(r, [99])[1]
    assert hi99 == ((20.0,),)  # the largest residual, not beyond


@given(
    n=st.integers(0, 6),
    k=st.integers(1, 5),
    levels=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_served_values_split_back_into_forecast_and_bounds(
    n: int, k: int, levels: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    fc, scale = rng.normal(size=(n, k)), rng.uniform(0.1, 5, n)
    lo, hi = -rng.uniform(0, 2, (levels, k)), rng.uniform(0, 2, (levels, k))
    out = intervals.served(fc, scale, lo, hi)
    assert out.shape == (n, k * (1 + 2 * levels))
    f, lows, highs = intervals.split(out, k, levels)
    np.testing.assert_array_equal(f, fc)
    np.testing.assert_allclose(lows, fc[:, None, :] + scale[:, None, None] * lo[None])
    np.testing.assert_allclose(highs, fc[:, None, :] + scale[:, None, None] * hi[None])
    assert intervals.served(fc, scale, np.zeros((0, k)), np.zeros((0, k))) is fc


def _with_levels(**spec: object) -> ModelSpec:
    return ModelSpec(horizon=2, **made_up_intervals((80, 95), 2), **spec)  # type: ignore[arg-type]


def test_the_spec_checks_its_intervals_and_keeps_old_versions() -> None:
    spec = _with_levels()
    assert spec.served_outputs == 2 * 5
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    plain = ModelSpec(horizon=2).to_dict()
    assert "levels" not in plain and "interval_lo" not in plain  # (older versions unchanged)
    with pytest.raises(ConfigError, match="forecasters"):
        _with_levels(task="classify", classes=("a", "b"))
    with pytest.raises(ConfigError, match="percents"):
        replace(spec, levels=(80, 100))
    with pytest.raises(ConfigError, match="one row of horizon values per level"):
        replace(spec, interval_hi=((1.0, 2.0),))
    with pytest.raises(ConfigError, match="one row of horizon values per level"):
        replace(spec, horizon=3)


def test_predictions_with_intervals_are_encoded_as_to_json_byte_for_byte() -> None:
    evs = [Event("a", "2020-01-01", 1.0, (), 0, 1), Event("b\u00e9", "2020-02-01", 2.0, (), 1, 7)]
    cols = EventColumns.of(evs)
    fc = np.array([[10.0, 11.0], [-1.0, 0.1]])
    lo, hi = np.array([[-1.0, -1], [-2, -2]]), np.array([[2.0, 2], [4, 4]])
    served = intervals.served(fc, np.array([1.0, 3.0]), lo, hi)
    for window, versions in ((np.zeros(2, np.int64), ["v1", "v1"]), (np.array([0, 3]), ["v", "w"])):
        out = Outputs(np.arange(2), np.array([4, 9]), served, versions, window)
        preds = out.predictions(cols, OutputShape(freq="MS", levels=(80, 95)))
        _, values = encode_outputs(cols, out, OutputShape(freq="MS", levels=(80, 95)))
        assert values == [p.to_json() for p in preds]
        assert [Prediction.from_json(v) for v in values] == preds
        doc = orjson.loads(values[1])
        assert doc["forecast"] == [-1.0, 0.1]
        assert doc["intervals"] == {
            "80": {"lo": [-4.0, -2.9], "hi": [5.0, 6.1]},
            "95": {"lo": [-7.0, -5.9], "hi": [11.0, 12.1]},
        }
        assert doc["forecast_ds"] == ["2020-03-01", "2020-04-01"]
        np.testing.assert_array_equal(preds[1].served, served[1])
        assert preds[0].intervals[95] == ((8.0, 9.0), (14.0, 15.0))


def test_training_calibrates_intervals_that_cover_fresh_points() -> None:
    """On a noisy seasonal panel, the 80% and 95% intervals calibrated on the validation targets
    cover about their share of later points the model never saw (offline: the stream equals it)."""
    df = make_panel(40, 90, 90, seed=3)
    cut = df.groupby("unique_id").cumcount(ascending=False) >= 12
    result = train(df[cut], TrainConfig(horizon=4, hidden_size=16, epochs=30, val_points=12))
    spec = result.model.spec
    assert spec.levels == (80, 95) and len(spec.interval_lo) == 2
    assert result.summary["intervals"]["residuals_per_step"] == 40 * 12
    assert result.summary["refit"]["epochs"] >= 1  # the refit kept the calibration
    hits = {80: [], 95: []}
    for s in split_series(df):
        out = offline_predict(result.model, s)[0]  # (T, 4 * 5)
        f, lo, hi = intervals.split(out, 4, 2)
        _, _, scale = series_inputs(s, spec)
        np.testing.assert_allclose(lo[:, 0], f + scale[:, None] * np.asarray(spec.interval_lo[0]))
        t0 = len(s.y) - 12  # origins whose four targets are all past the training data
        for t in range(t0 - 1, len(s.y) - 4):
            actual = s.y[t + 1 : t + 5]
            for i, level in enumerate((80, 95)):
                hits[level].extend((actual >= lo[t, i]) & (actual <= hi[t, i]))
    assert 0.68 <= np.mean(hits[80]) <= 0.92, np.mean(hits[80])
    assert 0.87 <= np.mean(hits[95]) <= 1.0, np.mean(hits[95])


def test_no_levels_or_no_validation_means_no_intervals() -> None:
    df = make_panel(6, 30, 30)
    assert (
        train(df, TrainConfig(horizon=2, hidden_size=8, epochs=2, levels=())).model.spec.levels
        == ()
    )
    plain = train(df, TrainConfig(horizon=2, hidden_size=8, epochs=2, val_points=0))
    assert plain.model.spec.levels == () and "intervals" not in plain.summary
    assert offline_predict(plain.model, split_series(df)[0])[0].shape[1] == 2


def test_the_python_api_frames_the_bounds_in_nixtlas_long_format(tmp_path: Path) -> None:
    save_artifact(make_model(horizon=2), tmp_path / "m")
    with OnlinePredictor(str(tmp_path / "m")) as live:
        rows = [
            {"unique_id": u, "ds": f"2024-0{i + 1}-01", "y": 10.0 + i}
            for i in range(3)
            for u in "ab"
        ]
        [*_, last] = live.predict(rows)
        frame = live.frame([{"unique_id": "b", "ds": "2024-04-01", "y": 14.0}])
    bounds = ["streamer-lo-80", "streamer-hi-80", "streamer-lo-95", "streamer-hi-95"]
    assert list(frame.columns) == ["unique_id", "ds", "cutoff", "h", "streamer", *bounds]
    assert last.unique_id == "b" and set(last.intervals) == {80, 95}
    assert (frame["streamer-lo-95"] < frame["streamer-lo-80"]).all()
    assert (frame["streamer-lo-80"] < frame["streamer"]).all()
    assert (frame["streamer"] < frame["streamer-hi-80"]).all()
    assert (frame["streamer-hi-80"] < frame["streamer-hi-95"]).all()
