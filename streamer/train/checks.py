"""What training and evaluation check about what a model saw and learnt.

- :func:`training_span`: per entity, what a model was trained on (kept beside the artifact);
- :func:`seen_in_training`, :func:`check_seen`: whether ``streamer evaluate`` would score points
  (or sequences) the model was trained on;
- :func:`check_learnt`: whether a classifier learnt anything at all.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from rich.console import Console

from streamer.errors import DataError, TrainingFailed
from streamer.model import ModelSpec, SequenceModel
from streamer.model.artifact import read_span
from streamer.train.data import Series, split_series
from streamer.train.offline import offline_predict, offline_windows

if TYPE_CHECKING:
    from streamer.train.config import TrainConfig

__all__ = ["check_learnt", "check_seen", "seen_in_training", "training_span", "values_crc"]

F64 = npt.NDArray[np.float64]


def training_span(series: Sequence[Series]) -> pd.DataFrame:
    """Per entity trained on: the time of its last point, the number of points and a CRC32 of
    their values, which tells ``streamer evaluate`` whether the points it holds out (or, for a
    classifier, the sequences it scores) were seen in training."""
    return pd.DataFrame(
        {
            "unique_id": [s.unique_id for s in series],
            "last_ds": [s.ds[-1] for s in series],
            "points": np.array([len(s.y) for s in series], np.int64),
            "crc32": np.array([values_crc(s.y) for s in series], np.int64),
        }
    )


def values_crc(y: npt.ArrayLike) -> int:
    """CRC32 of a series' values as float64 (:func:`training_span`)."""
    return zlib.crc32(np.ascontiguousarray(y, np.float64).tobytes())


def seen_in_training(
    span: pd.DataFrame, data: pd.DataFrame, horizon: int | None
) -> list[tuple[str, str]]:
    """The entities of ``data`` whose scored points the model was trained on, each with why:
    for a forecaster (``horizon``), its training reached the first of the last ``horizon``
    points; for a classifier (None), it was trained on the same sequence (same values)."""
    trained = span.set_index("unique_id")
    if horizon is not None:
        first_out = data[data.groupby("unique_id").cumcount(ascending=False) == horizon - 1]
        both = first_out[["unique_id", "ds"]].join(trained, on="unique_id", how="inner")
        try:
            reached = pd.to_datetime(both["last_ds"]) >= pd.to_datetime(both["ds"])
        except (ValueError, TypeError):  # times that are no dates: ISO-like text
            reached = both["last_ds"].astype(str) >= both["ds"].astype(str)
        return [
            (str(u), f"training reached {_day(t)}, the held-out points start at {_day(d)}")
            for u, t, d in zip(
                both["unique_id"][reached],
                both["last_ds"][reached],
                both["ds"][reached],
                strict=True,
            )
        ]
    out = []
    points = dict(zip(span["unique_id"], span["points"].tolist(), strict=True))
    crcs = dict(zip(span["unique_id"], span["crc32"].tolist(), strict=True))
    for s in split_series(data, []):
        n = points.get(s.unique_id)
        if n is not None and len(s.y) >= n and values_crc(s.y[:n]) == crcs[s.unique_id]:
            out.append((s.unique_id, f"trained on its first {n} events, the same values"))
    return out


def _day(ds: object) -> str:
    """A time as its date when it is midnight (as the data shows it), else as given."""
    try:
        t = pd.Timestamp(ds)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return str(ds)
    return str(t.date()) if t == t.normalize() else str(ds)


def check_seen(
    model_dir: Path,
    data: pd.DataFrame,
    spec: ModelSpec,
    label: str | None,
    allow_seen: bool,
    console: Console,
    origins: int = 1,
) -> int | None:
    """Refuse (or with ``allow_seen`` warn about) a model trained on what would be scored (a
    forecaster: the last ``origins`` horizons of each entity); the number of such entities, None
    if the artifact does not say what it was trained on."""
    span = read_span(model_dir)
    if span is None:
        console.print(
            "[yellow]warning:[/] the artifact does not say what it was trained on (trained "
            "before streamer recorded it): if its training data reached the points scored here, "
            "the scores are optimistic"
        )
        return None
    forecast = spec.task == "forecast"
    held = spec.horizon * origins
    if forecast:
        data = data[data.groupby("unique_id")["y"].transform("size") > held + 1]
    seen = seen_in_training(
        span, data.drop(columns=[label] if label else []), held if forecast else None
    )
    if not seen:
        return 0
    what = "held-out points" if forecast else "sequences"
    entity, why = seen[0]
    n = data["unique_id"].nunique()
    text = (
        f"the model was trained on the {what} of {len(seen)} of the {n} entities scored here "
        f"(e.g. {entity}: {why})"
    )
    if not allow_seen:
        hint = (
            f"train with --holdout {held} (or more) on this file"
            if forecast
            else "score it on sequences it was not trained on"
        )
        raise DataError(f"{text}: {hint}, or pass --allow-seen to score it anyway")
    console.print(f"[bold red]warning: {text}: the scores below are optimistic[/]")
    return len(seen)


def check_learnt(model: SequenceModel, series: Sequence[Series], cfg: TrainConfig) -> None:
    """Raise :class:`TrainingFailed` if a classifier learnt nothing: on its own training
    sequences (every closed window, for a window model) its log loss at the end is no better than
    predicting the class frequencies, and its accuracy no better than the majority class."""
    classes = model.spec.classes
    index = {c: i for i, c in enumerate(classes)}
    truths: list[int] = []
    probs: list[F64] = []
    with torch.no_grad():
        for s in series:
            labels = s.labels or []
            if model.spec.window:
                for row, p in offline_windows(model, s):
                    truths.append(index[labels[row]])
                    probs.append(p)
            else:
                truths.append(index[labels[-1]])
                probs.append(offline_predict(model, s)[0][-1])
    y, p = np.asarray(truths), np.asarray(probs)
    prior = np.bincount(y, minlength=len(classes)) / len(y)
    chance_loss = float(-np.sum(prior[prior > 0] * np.log(prior[prior > 0])))
    loss = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))
    accuracy, majority = float(np.mean(p.argmax(1) == y)), float(prior.max())
    if loss >= 0.98 * chance_loss and accuracy <= majority + 0.5 / len(y):
        raise TrainingFailed(
            f"the classifier learnt nothing: on its own training sequences its log loss is "
            f"{loss:.4f} (the class frequencies alone: {chance_loss:.4f}) and its accuracy "
            f"{accuracy:.3f} (the majority class: {majority:.3f}); try a lower --weight-decay "
            f"and --noise, more --epochs, or another --lr (it was {cfg.lr:g}; too low a rate "
            f"never starts to learn on long sequences, too high a rate diverges)"
        )
