from __future__ import annotations

import numpy as np

from streamer import scaling


def test_expanding_equals_repeated_updates_across_entities() -> None:
    rng = np.random.default_rng(0)
    ys = rng.normal(100, 30, size=(4, 80))
    z = np.zeros(4)
    stats = (z, z, z)
    for t in range(80):
        stats = scaling.update(stats, ys[:, t])
        for i in range(4):
            mean, scale = scaling.expanding(ys[i, : t + 1])
            assert mean[-1] == stats[1][i]
            assert scale[-1] == scaling.scale_of(stats)[i]


def test_starts_as_plain_mean_and_variance() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    mean, scale = scaling.expanding(y)
    np.testing.assert_allclose(mean, [1.0, 1.5, 2.0, 2.5])
    np.testing.assert_allclose(scale[-1], np.std(y))


def test_follows_a_drifting_level() -> None:
    y = np.linspace(0, 1000, 500)
    mean, _ = scaling.expanding(y)
    # An exponential mean lags a ramp of slope 2 by 2 * (1/alpha - 1) = 70; an expanding one by 500.
    assert abs((1000 - mean[-1]) - 2.004 * (1 / scaling.DEFAULT_ALPHA - 1)) < 1


def test_constant_series_get_a_positive_scale() -> None:
    _, scale = scaling.expanding(np.full(10, 50.0))
    assert (scale > 0).all() and scale[-1] == 50.0 * 1e-3
    _, scale0 = scaling.expanding(np.zeros(5))
    assert (scale0 > 0).all()
