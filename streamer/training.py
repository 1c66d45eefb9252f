"""Training a global model on long-format history, and the offline forward pass.

One model for all entities: every series is scaled by its own running statistics (exactly as the
predictor does online, see :mod:`streamer.scaling`) and the direct multi-horizon head learns the next
``horizon`` values in those units. The time-based split holds out the last ``val_points`` targets of
every series for early stopping; ``holdout`` drops the last points of every series altogether (the
demo scores the model on them).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch import Tensor

from streamer import scaling
from streamer.data import Series, feature_columns, split_series
from streamer.errors import DataError
from streamer.model import ModelSpec, SequenceModel

__all__ = ["TrainConfig", "TrainResult", "offline_forecast", "series_inputs", "train"]


@dataclass(frozen=True)
class TrainConfig:
    hidden_size: int = 32
    num_layers: int = 2
    horizon: int = 12
    epochs: int = 100
    batch_series: int = 16
    lr: float = 3e-3
    patience: int = 10
    #: Targets in the last ``val_points`` of each (training) series validate; default: horizon.
    val_points: int | None = None
    #: Points dropped from the end of every series before training.
    holdout: int = 0
    #: Steps at the start of a series left out of the loss while its statistics settle.
    warmup: int = 3
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class TrainResult:
    model: SequenceModel
    summary: dict[str, Any]


def series_inputs(
    s: Series, spec: ModelSpec
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Model inputs ``(T, I)`` of one series and the running (mean, scale) ``(T,)`` that made them.

    The same arithmetic, in the same precision, as :class:`streamer.predictor.Predictor`.
    """
    mean, scale = scaling.expanding(s.y)
    x = np.empty((len(s.y), spec.input_size), np.float32)
    x[:, 0] = (s.y - mean) / scale
    if spec.features:
        fm = np.asarray(spec.feature_mean, np.float64)
        fs = np.asarray(spec.feature_std, np.float64)
        x[:, 1:] = (s.features - fm) / fs
    return x, mean, scale


@torch.no_grad()
def offline_forecast(
    model: SequenceModel, s: Series
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``nn.LSTM`` over a whole series: forecasts ``(T, K)`` in the series' units, final h and c
    ``(L, H)``. This is what the streaming pipeline must reproduce event by event."""
    model.eval()
    x, mean, scale = series_inputs(s, model.spec)
    dev = next(model.parameters()).device
    out, (h, c) = model(torch.from_numpy(x)[None].to(dev))  # (1, T, K), (L, 1, H)
    fc = out[0].cpu().numpy().astype(np.float64) * scale[:, None] + mean[:, None]
    return fc, h[:, 0].cpu().numpy(), c[:, 0].cpu().numpy()


def _targets(
    y: npt.NDArray[np.float64],
    mean: npt.NDArray[np.float64],
    scale: npt.NDArray[np.float64],
    k: int,
) -> npt.NDArray[np.float32]:
    """Scaled targets ``(T, K)``: y[t+j+1] in the units of step t; NaN past the end."""
    t = len(y)
    tg = np.full((t, k), np.nan)
    for j in range(k):
        if t > j + 1:
            tg[: t - j - 1, j] = y[j + 1 :]
    tg = (tg - mean[:, None]) / scale[:, None]
    return np.clip(tg, -20, 20).astype(np.float32)


def train(
    df: pd.DataFrame,
    cfg: TrainConfig,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> TrainResult:
    """Train on a long-format frame; ``on_epoch(epoch, train_loss, val_loss)`` reports progress."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    feats = feature_columns(df)
    if cfg.holdout:
        df = df[df.groupby("unique_id").cumcount(ascending=False) >= cfg.holdout]
    series = [s for s in split_series(df, feats) if len(s.y) > cfg.warmup + 2]
    if not series:
        raise DataError("no series long enough to train on")
    fvals = np.concatenate([s.features for s in series]) if feats else np.zeros((0, 0))
    spec = ModelSpec(
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        horizon=cfg.horizon,
        features=tuple(feats),
        feature_mean=tuple(float(v) for v in fvals.mean(0)) if feats else (),
        feature_std=tuple(float(max(v, 1e-8)) for v in fvals.std(0)) if feats else (),
    )
    dev = torch.device(cfg.device)
    model = SequenceModel(spec).to(dev)

    val_points = cfg.val_points if cfg.val_points is not None else cfg.horizon
    xs, tgs, train_masks, val_masks = [], [], [], []
    for s in series:
        x, mean, scale = series_inputs(s, spec)
        tg = _targets(s.y, mean, scale, spec.horizon)
        t = len(s.y)
        # target index of (t, j) is t + j + 1; validation targets are the last val_points points
        target_idx = np.arange(t)[:, None] + np.arange(1, spec.horizon + 1)[None, :]
        valid = ~np.isnan(tg)
        valid[: cfg.warmup] = False
        is_val = target_idx >= t - val_points
        xs.append(x)
        tgs.append(np.nan_to_num(tg))
        train_masks.append(valid & ~is_val)
        val_masks.append(valid & is_val)

    def pad(arrs: Sequence[npt.NDArray[Any]], dtype: torch.dtype) -> Tensor:
        t_max = max(len(a) for a in arrs)
        out = np.zeros((len(arrs), t_max, *arrs[0].shape[1:]), arrs[0].dtype)
        for i, a in enumerate(arrs):
            out[i, : len(a)] = a
        return torch.from_numpy(out).to(dev, dtype)

    loss_fn = torch.nn.HuberLoss(reduction="sum")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def batch_loss(
        idx: Sequence[int], masks: Sequence[npt.NDArray[np.bool_]]
    ) -> tuple[Tensor, int]:
        x = pad([xs[i] for i in idx], torch.float32)
        tg = pad([tgs[i] for i in idx], torch.float32)
        m = pad([masks[i] for i in idx], torch.bool)
        out, _ = model(x)
        n = int(m.sum())
        return loss_fn(out[m], tg[m]), n

    best, best_state, bad_epochs, epoch = math.inf, copy.deepcopy(model.state_dict()), 0, 0
    history = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = rng.permutation(len(series))
        total, count = 0.0, 0
        for a in range(0, len(order), cfg.batch_series):
            idx = order[a : a + cfg.batch_series].tolist()
            loss, n = batch_loss(idx, train_masks)
            if n == 0:
                continue
            opt.zero_grad()
            (loss / n).backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total, count = total + loss.item(), count + n
        model.eval()
        with torch.no_grad():
            vl, vn = 0.0, 0
            for a in range(0, len(series), 64):
                loss, n = batch_loss(range(a, min(a + 64, len(series))), val_masks)
                vl, vn = vl + loss.item(), vn + n
        train_loss, val_loss = total / max(count, 1), vl / max(vn, 1)
        history.append((train_loss, val_loss))
        if on_epoch:
            on_epoch(epoch, train_loss, val_loss)
        if val_loss < best - 1e-6:
            best, best_state, bad_epochs = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval().cpu()
    summary = {
        "config": asdict(cfg),
        "entities": len(series),
        "rows": int(sum(len(s.y) for s in series)),
        "features": feats,
        "start": str(df["ds"].min()),
        "end": str(df["ds"].max()),
        "epochs_run": epoch,
        "best_val_loss": best,
        "final_train_loss": history[-1][0] if history else None,
    }
    return TrainResult(model, summary)
