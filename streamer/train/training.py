"""Training a global model on long-format history, and the offline forward pass.

One model for all entities. Three kinds of model, one artifact format:

- **forecasters** (``task="forecast"``): every series is scaled by its own running statistics
  (exactly as the predictor does online, see :mod:`streamer.scaling`) and the direct multi-horizon
  head learns the next ``horizon`` values in those units. The time-based split holds out the last
  ``val_points`` targets of every series for early stopping; ``holdout`` drops the last points of
  every series altogether (``streamer evaluate`` scores the model on them).
- **step classifiers** (``task="classify"``): class probabilities after every event, trained from
  a label column (the class of the sequence so far); a share of the entities is held out for
  early stopping.
- **window models** (``window > 0``): a bidirectional core classifies each closed window of events
  (``window`` events, or fewer when the end-marker feature closes it); the label of a window is
  the label of the event that closes it.

The cell (``lstm``, ``gru``, ``rnn``) is a setting of all three.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch import Tensor

from streamer import scaling
from streamer.errors import DataError
from streamer.model import ModelSpec, SequenceModel, intervals
from streamer.serve.times import infer_freq
from streamer.train.checks import check_learnt, training_span
from streamer.train.data import Series, feature_columns, split_series

__all__ = [
    "TrainConfig",
    "TrainResult",
    "offline_predict",
    "offline_windows",
    "series_inputs",
    "train",
    "window_bounds",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TrainConfig:
    cell: str = "lstm"
    hidden_size: int = 32
    num_layers: int = 2
    horizon: int = 12
    epochs: int = 100
    batch_series: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    dropout: float = 0.0
    patience: int = 10
    #: Targets in the last ``val_points`` of each (training) series validate; default: horizon.
    val_points: int | None = None
    #: Points dropped from the end of every series before training.
    holdout: int = 0
    #: Steps at the start of a series left out of the loss while its statistics settle.
    warmup: int = 3
    seed: int = 0
    device: str = "cpu"
    task: Literal["forecast", "classify"] = "forecast"
    #: The label column of a classifier.
    label: str | None = None
    scaling: Literal["entity", "none"] = "entity"
    window: int = 0
    window_end: str | None = None
    #: Classifiers: the share of entities (step models) or windows held out for early stopping;
    #: 0 trains on all of them for ``epochs`` epochs.
    val_fraction: float = 0.2
    #: Step classifiers: how each step's loss counts within a sequence: ``all`` equally, ``last``
    #: step only, ``ramp`` in proportion to the step (later steps have seen more), or ``mixed``:
    #: 3/4 on the last step, 1/4 ramped over all (the sequence's class matters most at its end,
    #: and the ramp keeps the early predictions meaningful).
    step_loss: Literal["all", "last", "ramp", "mixed"] = "mixed"
    #: Standard deviation of Gaussian noise added to the (scaled) target input while training,
    #: and of a random factor ``1 + scale_noise * N(0, 1)`` per sequence (augmentation).
    noise: float = 0.0
    scale_noise: float = 0.0
    #: Classifiers: label smoothing of the cross-entropy.
    label_smoothing: float = 0.0
    #: ``constant``, or ``cosine``: annealed to 0 over ``epochs``.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    #: After early stopping picked the epoch count on held-out targets (or entities), train again
    #: from the start on all of them for that many epochs: the model then learns from the most
    #: recent points too, which matter most to a forecast.
    refit: bool = True
    #: Classifiers: a model no better than the class frequencies on its own training sequences
    #: (log loss and accuracy at their ends) is an error, not an artifact.
    fail_at_chance: bool = True
    #: Forecasters: the levels (percent) of the prediction intervals calibrated on the validation
    #: targets and served with every forecast (:mod:`streamer.model.intervals`); () for none.
    levels: tuple[int, ...] = (80, 95)


@dataclass(frozen=True)
class TrainResult:
    model: SequenceModel
    summary: dict[str, Any]
    #: What the model was trained on, per entity (:func:`training_span`).
    span: pd.DataFrame | None = None


def series_inputs(s: Series, spec: ModelSpec) -> tuple[F32, F64, F64]:
    """Model inputs ``(T, I)`` of one series and the running (mean, scale) ``(T,)`` that made them.

    The same arithmetic, in the same precision, as :class:`streamer.serve.predictor.Predictor`.
    """
    t = len(s.y)
    if spec.scaling == "entity":
        mean, scale = scaling.expanding(s.y)
    else:
        mean, scale = np.zeros(t), np.ones(t)
    x = np.empty((t, spec.input_size), np.float32)
    x[:, 0] = (s.y - mean) / scale
    if spec.input_features:
        cols = [spec.features.index(f) for f in spec.input_features]
        nf = len(spec.features)
        fm = np.asarray(spec.feature_mean or [0.0] * nf, np.float64)[cols]
        fs = np.asarray(spec.feature_std or [1.0] * nf, np.float64)[cols]
        x[:, 1:] = (s.features[:, cols] - fm) / fs
    return x, mean, scale


@torch.no_grad()
def offline_predict(model: SequenceModel, s: Series) -> tuple[F64, F32, F32]:
    """A step model over a whole series with the fused sequence kernel: each event's output as
    served (forecasts in the series' units and their intervals' bounds, ``(T, K·(1 + 2·levels))``,
    or class probabilities ``(T, K)``), the final h and c. This is what the streaming pipeline
    must reproduce event by event."""
    model.eval()
    spec = model.spec
    x, mean, scale = series_inputs(s, spec)
    dev = next(model.parameters()).device
    raw, (h, c) = model(torch.from_numpy(x)[None].to(dev))  # (1, T, K), (L, 1, H)
    out = model.serve(raw)[0].cpu().numpy().astype(np.float64)
    if spec.task == "forecast":
        out = out * scale[:, None] + mean[:, None]
        if spec.levels:
            lo, hi = np.asarray(spec.interval_lo), np.asarray(spec.interval_hi)
            out = intervals.served(out, scale, lo, hi)
    return out, h[:, 0].cpu().numpy(), c[:, 0].cpu().numpy()


def window_bounds(s: Series, spec: ModelSpec) -> list[tuple[int, int]]:
    """``(start, end)`` rows of the series' closed windows, as the predictor closes them: after
    ``window`` events or at an event whose end marker is non-zero. An open last window is left."""
    ends = (
        s.features[:, spec.features.index(spec.window_end)] != 0
        if spec.window_end
        else np.zeros(len(s.y), bool)
    )
    out, start = [], 0
    for i in range(len(s.y)):
        if i + 1 - start >= spec.window or ends[i]:
            out.append((start, i + 1))
            start = i + 1
    return out


def _window_inputs(s: Series, spec: ModelSpec, a: int, b: int) -> F32:
    """One closed window's inputs ``(T, I)``, as the predictor builds them from its buffer: y as
    float32, scaled by the window's own plain statistics."""
    x = series_inputs(Series(s.unique_id, s.ds[a:b], s.y[a:b], s.features[a:b]), spec)[0]
    x[:, 0] = s.y[a:b]
    if spec.scaling == "entity":
        stats = (np.zeros(1), np.zeros(1), np.zeros(1))
        for v in s.y[a:b]:
            stats = scaling.update(stats, np.array([v]), alpha=0.0)
        x[:, 0] = (x[:, 0] - float(stats[1][0])) / float(scaling.scale_of(stats)[0])
    return x


@torch.no_grad()
def offline_windows(model: SequenceModel, s: Series) -> list[tuple[int, F64]]:
    """A window model over a whole series: ``(row of the closing event, probabilities)`` of each
    closed window."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for a, b in window_bounds(s, model.spec):
        x = torch.from_numpy(_window_inputs(s, model.spec, a, b))[None].to(dev)
        probs = model.serve(model.window_logits(x))[0].cpu().numpy().astype(np.float64)
        out.append((b - 1, probs))
    return out


def _targets(y: F64, mean: F64, scale: F64, k: int) -> F32:
    """Scaled targets ``(T, K)``: y[t+j+1] in the units of step t; NaN past the end."""
    t = len(y)
    tg = np.full((t, k), np.nan)
    for j in range(k):
        if t > j + 1:
            tg[: t - j - 1, j] = y[j + 1 :]
    tg = (tg - mean[:, None]) / scale[:, None]
    return np.clip(tg, -20, 20).astype(np.float32)


def _classes(series: Sequence[Series]) -> tuple[str, ...]:
    labels = sorted({v for s in series for v in (s.labels or ())})
    with contextlib.suppress(ValueError):
        labels.sort(key=float)  # "2" before "10"
    return tuple(labels)


def _pad(arrs: Sequence[npt.NDArray[Any]], dtype: torch.dtype, dev: torch.device) -> Tensor:
    t_max = max(len(a) for a in arrs)
    out = np.zeros((len(arrs), t_max, *arrs[0].shape[1:]), arrs[0].dtype)
    for i, a in enumerate(arrs):
        out[i, : len(a)] = a
    return torch.from_numpy(out).to(dev, dtype)


@dataclass
class _Problem:
    """Training items and their losses: ``loss(idx, train)`` -> (summed loss, count)."""

    n: int
    train_idx: list[int]
    val_idx: list[int]
    loss: Callable[[Sequence[int], bool], tuple[Tensor, float]]
    #: a forecaster's residuals on its validation targets, per horizon step (scaled units)
    residuals: Callable[[], list[F64]] | None = None


def train(
    df: pd.DataFrame,
    cfg: TrainConfig,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> TrainResult:
    """Train on a long-format frame; ``on_epoch(epoch, train_loss, val_loss)`` reports progress."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data = df
    classify = cfg.task == "classify" or cfg.window > 0
    if classify and not cfg.label:
        raise DataError("a classifier needs a label column (--label)")
    if cfg.label and cfg.label not in df.columns:
        raise DataError(f"no label column {cfg.label!r} in the data")
    feats = [c for c in feature_columns(df) if c != cfg.label]
    if cfg.holdout:
        df = df[df.groupby("unique_id").cumcount(ascending=False) >= cfg.holdout]
    min_len = cfg.warmup + 3 if not classify else 1
    series = [s for s in split_series(df, feats, cfg.label) if len(s.y) >= min_len]
    if not series:
        raise DataError("no series long enough to train on")
    fvals = np.concatenate([s.features for s in series]) if feats else np.zeros((0, 0))
    spec = ModelSpec(
        cell=cfg.cell,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        horizon=cfg.horizon,
        features=tuple(feats),
        feature_mean=tuple(float(v) for v in fvals.mean(0)) if feats else (),
        feature_std=tuple(float(max(v, 1e-8)) for v in fvals.std(0)) if feats else (),
        dropout=cfg.dropout,
        task="classify" if classify else "forecast",
        classes=_classes(series) if classify else (),
        scaling=cfg.scaling,
        window=cfg.window,
        window_end=cfg.window_end,
        freq=None if classify else infer_freq(pd.to_datetime(df["ds"]), df["unique_id"]),
    )
    dev = torch.device(cfg.device)
    model = SequenceModel(spec).to(dev)
    if cfg.window:
        problem = _window_problem(model, series, cfg, rng, dev)
    elif classify:
        problem = _classify_problem(model, series, cfg, rng, dev)
    else:
        problem = _forecast_problem(model, series, cfg, dev)

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
        if cfg.lr_schedule == "cosine"
        else None
    )
    best, best_state, bad_epochs, epoch = math.inf, copy.deepcopy(model.state_dict()), 0, 0
    best_epoch = 0
    history = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = np.asarray(problem.train_idx)[rng.permutation(len(problem.train_idx))]
        total, count = 0.0, 0.0
        for a in range(0, len(order), cfg.batch_series):
            loss, n = problem.loss(order[a : a + cfg.batch_series].tolist(), True)
            if n == 0:
                continue
            opt.zero_grad()
            (loss / n).backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total, count = total + loss.item(), count + n
        if sched is not None:
            sched.step()
        model.eval()
        with torch.no_grad():
            vl, vn = 0.0, 0.0
            for a in range(0, len(problem.val_idx), 64):
                loss, n = problem.loss(problem.val_idx[a : a + 64], False)
                vl, vn = vl + loss.item(), vn + n
        train_loss = total / max(count, 1)
        val_loss = vl / vn if vn else math.nan  # nothing held out: train for all epochs
        history.append((train_loss, val_loss))
        if on_epoch:
            on_epoch(epoch, train_loss, val_loss)
        if not vn:
            best_state = model.state_dict()
        elif val_loss < best - 1e-6:
            best, best_state, bad_epochs = val_loss, copy.deepcopy(model.state_dict()), 0
            best_epoch = epoch
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    calibration, residuals = _calibrate(model, problem, cfg)
    model.cpu()
    summary = {
        "config": asdict(cfg),
        "entities": len(series),
        "rows": int(sum(len(s.y) for s in series)),
        "features": feats,
        "start": str(df["ds"].min()),
        "end": str(df["ds"].max()),
        "epochs_run": epoch,
        "best_val_loss": best if math.isfinite(best) else None,  # None: nothing held out
        "final_train_loss": history[-1][0] if history else None,
    }
    if classify:
        summary["classes"] = list(spec.classes)
        summary["training_items"] = len(problem.train_idx)
        summary["validation_items"] = len(problem.val_idx)
    if classify and cfg.fail_at_chance:
        check_learnt(model, series, cfg)
    if calibration:
        model.spec = replace(model.spec, **calibration)
        summary["intervals"] = {
            "levels": list(cfg.levels),
            "calibrated_on": "the validation targets of the model that chose the epochs",
            "residuals_per_step": residuals,
        }
    if cfg.refit and best_epoch:
        # The epoch count is chosen; now learn from the held-out targets (entities) too.
        again = replace(cfg, epochs=best_epoch, val_points=0, val_fraction=0.0, refit=False)
        full = train(data, again, on_epoch)
        if calibration:  # (the refit has no held-out targets left to calibrate on)
            full.model.spec = replace(full.model.spec, **calibration)
            full.summary["intervals"] = summary["intervals"]
        full.summary.update(
            config=asdict(cfg),
            refit={
                "epochs": best_epoch,
                "chosen_by": summary["best_val_loss"],
                "epochs_run_to_choose": epoch,
            },
            best_val_loss=summary["best_val_loss"],
        )
        return full
    return TrainResult(model, summary, training_span(series))


def _calibrate(
    model: SequenceModel, problem: _Problem, cfg: TrainConfig
) -> tuple[dict[str, Any], int]:
    """The chosen forecaster's interval offsets from its validation residuals, as ModelSpec
    fields, and the fewest residuals of a horizon step; {} when it is no forecaster, no levels
    are asked for or too few targets validate."""
    if problem.residuals is None or not cfg.levels:
        return {}, 0
    residuals = problem.residuals()
    lo, hi = intervals.calibrate(residuals, cfg.levels)
    if not lo:
        return {}, 0
    fields = {"levels": tuple(cfg.levels), "interval_lo": lo, "interval_hi": hi}
    return fields, min(map(len, residuals))


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


def _forecast_problem(
    model: SequenceModel, series: list[Series], cfg: TrainConfig, dev: torch.device
) -> _Problem:
    """Every series both trains and validates: its last ``val_points`` targets validate."""
    spec = model.spec
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
            out, _ = model(_pad([xs[i] for i in idx], torch.float32, dev))
            r = (_pad([tgs[i] for i in idx], torch.float32, dev) - out).cpu().numpy()
            m = _pad([val_masks[i] for i in idx], torch.bool, dev).cpu().numpy()
            for j in range(spec.horizon):
                per_step[j].append(r[..., j][m[..., j]].astype(np.float64))
        return [np.concatenate(p) for p in per_step]

    everyone = list(range(len(series)))
    return _Problem(len(series), everyone, everyone, loss, residuals)


def _split(n: int, cfg: TrainConfig, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    order = rng.permutation(n)
    n_val = min(max(1, round(n * cfg.val_fraction)), n - 1) if n > 1 and cfg.val_fraction else 0
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _classify_problem(
    model: SequenceModel,
    series: list[Series],
    cfg: TrainConfig,
    rng: np.random.Generator,
    dev: torch.device,
) -> _Problem:
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
    return _Problem(len(series), train_idx, val_idx, loss)


def _window_problem(
    model: SequenceModel,
    series: list[Series],
    cfg: TrainConfig,
    rng: np.random.Generator,
    dev: torch.device,
) -> _Problem:
    """Cross-entropy of each closed window against the label of the event that closes it."""
    spec = model.spec
    index = {c: i for i, c in enumerate(spec.classes)}
    xs: list[F32] = []
    ys: list[int] = []
    for s in series:
        for a, b in window_bounds(s, spec):
            xs.append(_window_inputs(s, spec, a, b))
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
    return _Problem(len(xs), train_idx, val_idx, loss)
