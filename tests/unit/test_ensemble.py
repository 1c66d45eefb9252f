"""Ensembles: members side by side in one core, served as one model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.errors import ConfigError
from streamer.model import ModelSpec, SequenceModel
from streamer.model.artifact import load_artifact, save_artifact
from streamer.model.ensemble import merge
from streamer.train.data import split_series
from streamer.train.offline import offline_predict
from streamer.train.training import TrainConfig, train
from tests.conftest import make_panel


def members(cell: str, task: str, n: int = 3, **spec: object) -> list[SequenceModel]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        kind = {"classes": ("a", "b", "c")} if task == "classify" else {"horizon": 4}
        out.append(
            SequenceModel(
                ModelSpec(
                    cell=cell,
                    hidden_size=8,
                    num_layers=2,
                    task=task,
                    features=("f",),
                    **kind,
                    **spec,
                )  # type: ignore[arg-type]
            ).eval()
        )
    return out


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("task", ["forecast", "classify"])
@pytest.mark.parametrize("n", [2, 3])
def test_the_merged_core_is_its_members_side_by_side(cell: str, task: str, n: int) -> None:
    """Over a whole sequence and stepped one event at a time, the merged model serves the median
    of its members' forecasts (the mean of their probabilities), each member's state being its
    own block of the merged state."""
    ms = members(cell, task, n)
    ens = merge(ms)
    assert ens.spec.members == n and ens.spec.state_shape == (2, 8 * n)
    x = torch.randn(5, 30, 2)
    with torch.no_grad():
        each = torch.stack([m.serve(m(x)[0]) for m in ms])  # (M, B, T, K)
        want = each.mean(0) if task == "classify" else each.quantile(0.5, dim=0)
        got, (h, _) = ens(x)
        torch.testing.assert_close(ens.serve(got), want, atol=1e-6, rtol=1e-5)
        for i, m in enumerate(ms):  # member i's state is units i*H..(i+1)*H of every layer
            torch.testing.assert_close(h[:, :, i * 8 : (i + 1) * 8], m(x)[1][0], atol=1e-6, rtol=0)
        state = ens.rnn.zero_state(5)
        steps = []
        for t in range(30):
            out, state = ens.step(x[:, t], state)
            steps.append(ens.serve(out))
    torch.testing.assert_close(torch.stack(steps, 1), want, atol=1e-5, rtol=1e-5)


def test_members_must_share_their_shape_and_data() -> None:
    lstm, gru = members("lstm", "forecast", 1)[0], members("gru", "forecast", 1)[0]
    with pytest.raises(ConfigError, match="share cell"):
        merge([lstm, gru])
    wide = SequenceModel(replace(lstm.spec, hidden_size=16))
    with pytest.raises(ConfigError, match="share hidden_size"):
        merge([lstm, wide])
    other = SequenceModel(replace(lstm.spec, feature_mean=(3.0,), feature_std=(1.0,)))
    with pytest.raises(ConfigError, match="same data"):
        merge([lstm, other])
    with pytest.raises(ConfigError, match="at least two"):
        merge([lstm])
    with pytest.raises(ConfigError, match="single models"):
        merge([merge(members("lstm", "forecast", 2)), lstm])
    with pytest.raises(ConfigError, match="no window model"):
        ModelSpec(task="classify", classes=("a", "b"), window=4, members=2)


def test_an_ensemble_is_one_artifact_and_one_version(tmp_path: Path) -> None:
    ens = merge(members("gru", "forecast", 3))
    version = save_artifact(ens, tmp_path / "e")
    art = load_artifact(tmp_path / "e")
    assert art.version == version and art.spec == ens.spec and art.spec.members == 3
    assert "members" not in members("gru", "forecast", 1)[0].spec.to_dict()  # (old versions)


def test_training_an_ensemble_gives_the_median_of_its_members() -> None:
    """``members=3`` trains three models alike but for their seeds: its forecast is the median of
    the three models trained alone, and its intervals are calibrated on the ensemble."""
    df = make_panel(12, 50, 50, seed=2)
    cfg = TrainConfig(horizon=3, hidden_size=8, epochs=3, batch_series=4)
    ens = train(df, replace(cfg, members=3, seed=5))
    assert ens.model.spec.members == 3 and ens.model.spec.levels == (80, 95)
    assert [m["seed"] for m in ens.summary["members"]] == [5, 6, 7]
    # (few series: each validates on its last 10 points, a fifth of 50, not on the horizon alone)
    assert ens.summary["intervals"]["residuals_per_step"] == 12 * 10
    alone = [train(df, replace(cfg, seed=s, levels=())).model for s in (5, 6, 7)]
    for s in split_series(df)[:4]:
        got = offline_predict(ens.model, s)[0][:, :3]
        want = np.median([offline_predict(m, s)[0] for m in alone], axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
