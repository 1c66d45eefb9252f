"""Training a global model on long-format history (the losses are in :mod:`~.problems`, the
offline forward pass in :mod:`~.offline`).

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

The cell (``lstm``, ``gru``, ``rnn``) is a setting of all three. Early stopping chooses the
epochs, then a refit learns from the held-out targets too; a forecaster's prediction intervals are
calibrated on the held-out targets of the model early stopping chose (:mod:`streamer.model.intervals`),
and ``members > 1`` trains an ensemble (:mod:`streamer.model.ensemble`).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from streamer import scaling, seasonal
from streamer.errors import ConfigError, DataError, TrainingFailed
from streamer.model import ModelSpec, SequenceModel, ensemble, intervals
from streamer.serve.times import infer_freq
from streamer.train.checks import check_learnt, training_span
from streamer.train.config import TrainConfig, resolve
from streamer.train.data import Series, feature_columns, split_series
from streamer.train.problems import Problem, classify_problem, forecast_problem, window_problem

__all__ = ["TrainConfig", "TrainResult", "resolve", "train"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TrainResult:
    model: SequenceModel
    summary: dict[str, Any]
    #: What the model was trained on, per entity (:func:`training_span`).
    span: pd.DataFrame | None = None
    #: The model early stopping chose, before the refit (``model`` itself without a refit).
    chosen: SequenceModel | None = None


def _classes(series: Sequence[Series]) -> tuple[str, ...]:
    labels = sorted({v for s in series for v in (s.labels or ())})
    with contextlib.suppress(ValueError):
        labels.sort(key=float)  # "2" before "10"
    return tuple(labels)


def train(
    df: pd.DataFrame,
    cfg: TrainConfig,
    on_epoch: Callable[[int, float, float], None] | None = None,
    on_member: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train on a long-format frame; ``on_epoch(epoch, train_loss, val_loss)`` reports progress,
    and ``on_member(i)`` the start of an ensemble's i-th member (``cfg.members > 1``)."""
    cfg = resolve(df, cfg)
    if cfg.next is not None:  # (its module builds on this one's loop)
        from streamer.train.nextevent import train_next

        return train_next(df, cfg, on_epoch)
    if (cfg.season or cfg.season2) and (cfg.task == "classify" or cfg.window):
        raise ConfigError("seasonal components (--season) are for forecasters, not classifiers")
    if (
        cfg.season2
        and cfg.season is not None
        and (wrong := seasonal.check(cfg.season, cfg.season2))
    ):
        raise ConfigError(f"--season: {wrong}")  # (an auto first season: checked below)
    if (cfg.members or 1) > 1:
        return _train_members(df, cfg, on_epoch, on_member)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data = df
    classify = cfg.task == "classify" or cfg.window > 0
    df, feats, series = _training_series(df, cfg)
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
        calendar=cfg.calendar,
    )
    season = _season(series, spec.freq, cfg) if not classify else 0
    if cfg.season2 and (not season or seasonal.check(season, cfg.season2)):
        raise DataError(_no_first_season(season, cfg, spec.freq))
    if season:
        smoothing = cfg.smoothing or _smoothing(series, cfg, season, cfg.season2)
        spec = replace(spec, season=season, smoothing=smoothing, season2=cfg.season2)
    dev = torch.device(cfg.device)
    model = SequenceModel(spec).to(dev)
    if cfg.window:
        problem = window_problem(model, series, cfg, rng, dev)
    elif classify:
        problem = classify_problem(model, series, cfg, rng, dev)
    else:
        problem = forecast_problem(model, series, cfg, dev)
    best, best_epoch, epoch, history = _fit(model, problem, cfg, rng, on_epoch)
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
    if season:
        alpha, gamma, delta = seasonal.params(spec.smoothing)
        components: dict[str, float] = {"season": season, "alpha": alpha, "gamma": gamma}
        if spec.season2:
            components.update(season2=spec.season2, delta=delta)
        summary["components"] = components
    if classify:
        summary["classes"] = list(spec.classes)
        summary["training_items"] = len(problem.train_idx)
        summary["validation_items"] = len(problem.val_idx)
    if classify and cfg.fail_at_chance:
        check_learnt(model, series, cfg)
    if calibration:
        model.spec = replace(model.spec, **calibration)
        summary["intervals"] = _intervals_summary(cfg, residuals)
    if cfg.refit and best_epoch:
        # The epoch count is chosen; now learn from the held-out targets (entities) too.
        again = replace(
            cfg,
            epochs=best_epoch,
            val_points=0,
            val_fraction=0.0,
            refit=False,
            season=spec.season,  # (the components of the chosen model, calibrated on)
            season2=spec.season2,
            smoothing=spec.smoothing if spec.season else None,
        )
        try:
            full = train(data, again, on_epoch)
        except TrainingFailed as failed:
            # From scratch on long sequences a run may stay at chance where the choosing run did
            # not (a member of an ensemble on OSULeaf, 427 steps): the chosen model, which learnt
            # and was validated, is served instead of no model at all.
            summary["refit_failed"] = str(failed)
            return TrainResult(model, summary, training_span(series), model)
        if calibration:  # (the refit has no held-out targets left to calibrate on)
            full.model.spec = replace(full.model.spec, **calibration)
            full.summary["intervals"] = summary["intervals"]
        full.summary.update(refitted(cfg, summary, best_epoch, epoch))
        return replace(full, chosen=model)
    return TrainResult(model, summary, training_span(series), model)


def refitted(
    cfg: TrainConfig, summary: dict[str, Any], best_epoch: int, epochs_run: int
) -> dict[str, Any]:
    """What a refit's summary says of the run that chose its epochs."""
    return {
        "config": asdict(cfg),
        "refit": {
            "epochs": best_epoch,
            "chosen_by": summary["best_val_loss"],
            "epochs_run_to_choose": epochs_run,
        },
        "best_val_loss": summary["best_val_loss"],
    }


def _training_series(
    df: pd.DataFrame, cfg: TrainConfig
) -> tuple[pd.DataFrame, list[str], list[Series]]:
    """The frame without the held-out points, the feature columns and the series to train on."""
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
    return df, feats, series


def _season(series: Sequence[Series], freq: str | None, cfg: TrainConfig) -> int:
    """The season of the components: ``cfg.season`` if given, else the usual one of the
    frequency when most series have two seasons before their validation points, else none."""
    if cfg.season is not None:
        return cfg.season
    season = seasonal.season_of(freq)
    cut = cfg.val_points if cfg.val_points is not None else cfg.horizon
    long_enough = sum(len(s.y) >= 2 * season + cut for s in series)
    return season if season and cfg.scaling == "entity" and 2 * long_enough > len(series) else 0


def _no_first_season(season: int, cfg: TrainConfig, freq: str | None) -> str:
    """Why ``--season auto,M`` found no first season for ``M``."""
    m2 = cfg.season2
    if season:
        return f"--season auto,{m2}: the data's season is {season}: {seasonal.check(season, m2)}"
    usual = seasonal.season_of(freq)
    if cfg.scaling != "entity":
        why = "seasonal components need --scaling entity"
    elif not usual:
        why = f"the data's frequency ({freq or 'none found'}) has no usual season"
    else:
        why = f"most series are shorter than two seasons of {usual} and the validation points"
    return f"--season auto,{m2}: no first season ({why}); give both: --season N,{m2}"


#: The most series the components' smoothing is fitted on (drawn with the seed when there are more;
#: the fit's memory is series x sets x the components' width, 430 kB a series for 24,168).
FIT_SERIES = 256


def _smoothing(
    series: Sequence[Series], cfg: TrainConfig, season: int, season2: int = 0
) -> tuple[float, ...]:
    """The components' ``(alpha, gamma)`` (and ``delta`` with a second season), fitted to the
    training points that do not validate."""
    cut = cfg.val_points if cfg.val_points is not None else cfg.horizon
    longest = max(season, season2)
    # (a fit scores the forecasts made after the longest season and the warm-up)
    ys = [s.y[: len(s.y) - cut] for s in series if len(s.y) - cut > longest + cfg.warmup + 1]
    if not ys:
        raise DataError(
            f"no series is longer than a season ({longest}), the warm-up ({cfg.warmup}) and the "
            "held-out points"
        )
    if len(ys) > FIT_SERIES:
        pick = np.random.default_rng(cfg.seed).choice(len(ys), FIT_SERIES, replace=False)
        ys = [ys[i] for i in sorted(pick)]
    scales = [scaling.expanding(y)[1] for y in ys]
    return seasonal.fit(ys, season, cfg.horizon, scales, skip=cfg.warmup, season2=season2)


def _fit(
    model: SequenceModel,
    problem: Problem,
    cfg: TrainConfig,
    rng: np.random.Generator,
    on_epoch: Callable[[int, float, float], None] | None,
) -> tuple[float, int, int, list[tuple[float, float]]]:
    """The epochs, with early stopping on the held-out items: the model ends with the weights of
    its best epoch. Returns the best validation loss, its epoch, the epochs run, the losses."""
    assert cfg.epochs and cfg.lr is not None and cfg.patience, "resolve() the config first"
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
    return best, best_epoch, epoch, history


def _train_members(
    df: pd.DataFrame,
    cfg: TrainConfig,
    on_epoch: Callable[[int, float, float], None] | None,
    on_member: Callable[[int], None] | None,
) -> TrainResult:
    """An ensemble: ``cfg.members`` models trained alike but for their seeds (``seed``,
    ``seed + 1``...), merged into one (:mod:`streamer.model.ensemble`); the intervals are
    calibrated on the validation targets of the merged models early stopping chose."""
    single = replace(cfg, members=1, levels=())
    results = []
    for i in range(cfg.members or 1):
        if on_member:
            on_member(i)
        results.append(train(df, replace(single, seed=cfg.seed + i), on_epoch))
    model = ensemble.merge([r.model for r in results])
    summary = {
        **results[0].summary,
        "config": asdict(cfg),
        "members": [
            {"seed": cfg.seed + i, **{k: r.summary.get(k) for k in _MEMBER_KEYS}}
            for i, r in enumerate(results)
        ],
    }
    for k in _MEMBER_KEYS:
        summary.pop(k, None)
    chosen = ensemble.merge([r.chosen or r.model for r in results])
    if model.spec.task == "forecast" and cfg.levels:
        series = _training_series(df, cfg)[2]
        dev = torch.device(cfg.device)
        problem = forecast_problem(chosen.to(dev), series, cfg, dev)
        calibration, residuals = _calibrate(chosen, problem, cfg)
        chosen.cpu()
        if calibration:
            model.spec = replace(model.spec, **calibration)
            summary["intervals"] = _intervals_summary(cfg, residuals)
    return TrainResult(model, summary, results[0].span, chosen)


#: What an ensemble's summary tells of each member.
_MEMBER_KEYS = ("epochs_run", "best_val_loss", "final_train_loss", "refit", "refit_failed")


def _intervals_summary(cfg: TrainConfig, residuals: int) -> dict[str, Any]:
    return {
        "levels": list(cfg.levels),
        "calibrated_on": "the validation targets of the model that chose the epochs",
        "residuals_per_step": residuals,
    }


def _calibrate(
    model: SequenceModel, problem: Problem, cfg: TrainConfig
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
