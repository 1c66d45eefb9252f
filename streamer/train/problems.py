"""What a model learns from: the training items, their losses and (forecasters) residuals.

One :class:`Problem` per kind of model, built once per training run over its series: a
forecaster's targets are the next ``horizon`` values in the units of each step (the last
``val_points`` of every series validate), a step classifier's its sequences' labels (a share of
the entities validates), a window model's its closed windows (a share validates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from streamer.errors import DataError
from streamer.model import SequenceModel
from streamer.train.data import Series
from streamer.train.offline import series_inputs, window_bounds, window_inputs

if TYPE_CHECKING:
    from streamer.train.config import TrainConfig

__all__ = ["Problem", "classify_problem", "forecast_problem", "window_problem"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def _targets(y: F64, start: F64, scale: F64, k: int) -> F32:
    """Scaled targets ``(T, K)``: y[t+j+1] in the units of step t (``(y - start) / scale``, see
    :func:`~streamer.train.offline.series_inputs`); NaN past the end."""
    t = len(y)
    tg = np.full((t, k), np.nan)
    for j in range(k):
        if t > j + 1:
            tg[: t - j - 1, j] = y[j + 1 :]
    tg = (tg - start) / scale[:, None]
    return np.clip(tg, -20, 20).astype(np.float32)


def _pad(arrs: Sequence[npt.NDArray[Any]], dtype: torch.dtype, dev: torch.device) -> Tensor:
    t_max = max(len(a) for a in arrs)
    out = np.zeros((len(arrs), t_max, *arrs[0].shape[1:]), arrs[0].dtype)
    for i, a in enumerate(arrs):
        out[i, : len(a)] = a
    return torch.from_numpy(out).to(dev, dtype)


@dataclass
class Problem:
    """Training items and their losses: ``loss(idx, train)`` -> (summed loss, count)."""

    n: int
    train_idx: list[int]
    val_idx: list[int]
    loss: Callable[[Sequence[int], bool], tuple[Tensor, float]]
    #: a forecaster's residuals on its validation targets, per horizon step (scaled units)
    residuals: Callable[[], list[F64]] | None = None


def _noisy(x: Tensor, cfg: TrainConfig, train: bool) -> Tensor:
    """Augmented target inputs ``x[..., 0]`` while training (padding gets noise too: it is
    masked out of the loss)."""
    if not (train and (cfg.noise or cfg.scale_noise)):
        return x
    x = x.clone()
    if cfg.noise:
        x[..., 0] += cfg.noise * torch.randn_like(x[..., 0])
    if cfg.scale_noise:
        factor = 1 + cfg.scale_noise * torch.randn(x.shape[0], *([1] * (x.dim() - 2)))
        x[..., 0] *= factor.to(x.device)
    return x


def forecast_problem(
    model: SequenceModel, series: list[Series], cfg: TrainConfig, dev: torch.device
) -> Problem:
    """Every series both trains and validates: its last ``val_points`` targets validate."""
    spec = model.spec
    val_points = cfg.val_points if cfg.val_points is not None else cfg.horizon
    xs, tgs, train_masks, val_masks = [], [], [], []
    for s in series:
        x, start, scale = series_inputs(s, spec)
        tg = _targets(s.y, start, scale, spec.horizon)
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
    loss_fn = torch.nn.HuberLoss(reduction="sum")

    def loss(idx: Sequence[int], train: bool) -> tuple[Tensor, float]:
        masks = train_masks if train else val_masks
        x = _noisy(_pad([xs[i] for i in idx], torch.float32, dev), cfg, train)
        tg = _pad([tgs[i] for i in idx], torch.float32, dev)
        m = _pad([masks[i] for i in idx], torch.bool, dev)
        out, _ = model(x)
        return loss_fn(out[m], tg[m]), float(m.sum())

    @torch.no_grad()
    def residuals() -> list[F64]:
        """Scaled ``y - ŷ`` of every validation target, per horizon step."""
        per_step: list[list[F64]] = [[] for _ in range(spec.horizon)]
        for a in range(0, len(series), 64):
            idx = range(a, min(a + 64, len(series)))
            out = model.serve(model(_pad([xs[i] for i in idx], torch.float32, dev))[0])
            r = (_pad([tgs[i] for i in idx], torch.float32, dev) - out).cpu().numpy()
            m = _pad([val_masks[i] for i in idx], torch.bool, dev).cpu().numpy()
            for j in range(spec.horizon):
                per_step[j].append(r[..., j][m[..., j]].astype(np.float64))
        return [np.concatenate(p) for p in per_step]

    everyone = list(range(len(series)))
    return Problem(len(series), everyone, everyone, loss, residuals)


def _split(n: int, cfg: TrainConfig, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    order = rng.permutation(n)
    n_val = min(max(1, round(n * cfg.val_fraction)), n - 1) if n > 1 and cfg.val_fraction else 0
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def classify_problem(
    model: SequenceModel,
    series: list[Series],
    cfg: TrainConfig,
    rng: np.random.Generator,
    dev: torch.device,
) -> Problem:
    """Per-step cross-entropy against each event's label, weighted by ``cfg.step_loss``."""
    spec = model.spec
    index = {c: i for i, c in enumerate(spec.classes)}
    xs = [series_inputs(s, spec)[0] for s in series]
    ys = [np.asarray([index[v] for v in s.labels or ()], np.int64) for s in series]
    ws = []
    for s in series:
        t = len(s.y)
        last = np.zeros(t)
        last[-1] = 1.0
        ramp = np.arange(1, t + 1) / (t * (t + 1) / 2)
        w = {
            "last": last,
            "ramp": ramp,
            "mixed": 0.75 * last + 0.25 * ramp,
            "all": np.full(t, 1 / t),
        }[cfg.step_loss]
        ws.append(w.astype(np.float32))  # each sequence's weights sum to 1
    ce = torch.nn.CrossEntropyLoss(reduction="none", label_smoothing=cfg.label_smoothing)

    def loss(idx: Sequence[int], train: bool) -> tuple[Tensor, float]:
        x = _noisy(_pad([xs[i] for i in idx], torch.float32, dev), cfg, train)
        y = _pad([ys[i] for i in idx], torch.int64, dev)
        w = _pad([ws[i] for i in idx], torch.float32, dev)  # 0 past each series' end
        out, _ = model(x)  # (B, T, C)
        per = ce(out.reshape(-1, out.shape[-1]), y.reshape(-1)).reshape(y.shape)
        return (per * w).sum(), float(w.sum())

    train_idx, val_idx = _split(len(series), cfg, rng)
    return Problem(len(series), train_idx, val_idx, loss)


def window_problem(
    model: SequenceModel,
    series: list[Series],
    cfg: TrainConfig,
    rng: np.random.Generator,
    dev: torch.device,
) -> Problem:
    """Cross-entropy of each closed window against the label of the event that closes it."""
    spec = model.spec
    index = {c: i for i, c in enumerate(spec.classes)}
    xs: list[F32] = []
    ys: list[int] = []
    for s in series:
        for a, b in window_bounds(s, spec):
            xs.append(window_inputs(s, spec, a, b))
            ys.append(index[(s.labels or [])[b - 1]])
    if len(xs) < 2:
        raise DataError(f"only {len(xs)} closed window(s) of {spec.window} events to train on")
    ce = torch.nn.CrossEntropyLoss(reduction="sum", label_smoothing=cfg.label_smoothing)

    def loss(idx: Sequence[int], train: bool) -> tuple[Tensor, float]:
        total, n = torch.zeros((), device=dev), 0
        by_len: dict[int, list[int]] = {}
        for i in idx:
            by_len.setdefault(len(xs[i]), []).append(i)
        for group in by_len.values():  # windows of one length at a time: no padding
            x = _noisy(torch.from_numpy(np.stack([xs[i] for i in group])).to(dev), cfg, train)
            y = torch.tensor([ys[i] for i in group], device=dev)
            total = total + ce(model.window_logits(x), y)
            n += len(group)
        return total, float(n)

    train_idx, val_idx = _split(len(xs), cfg, rng)
    return Problem(len(xs), train_idx, val_idx, loss)
