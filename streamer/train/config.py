"""What a training run is asked for (:class:`TrainConfig`) and the defaults that depend on the
task and the data (:func:`resolve`); the training itself is :mod:`streamer.train.training`."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import pandas as pd

from streamer import calendar
from streamer.errors import ConfigError

__all__ = [
    "CALIBRATION_DAYS",
    "CALIBRATION_TARGETS",
    "SMALL_CLASSIFIER_EVENTS",
    "SMALL_CLASSIFIER_MEMBERS",
    "TrainConfig",
    "resolve",
]


@dataclass(frozen=True)
class TrainConfig:
    cell: str = "lstm"
    hidden_size: int = 32
    num_layers: int = 2
    horizon: int = 12
    #: Passes over the data at most, Adam's learning rate and early stopping's patience (epochs).
    #: None: by task (:func:`resolve`): forecasters 100, 3e-3 and 10; classifiers 200, a rate that
    #: grows with the length of their sequences and 20.
    epochs: int | None = None
    batch_series: int = 16
    lr: float | None = None
    weight_decay: float = 0.0
    dropout: float = 0.0
    patience: int | None = None
    #: Targets in the last ``val_points`` of each (training) series validate; default: the
    #: horizon, or more for a panel of few series, so that early stopping and the intervals'
    #: calibration see about :data:`CALIBRATION_TARGETS` targets per step ahead (at most a fifth
    #: of the median series).
    val_points: int | None = None
    #: Points dropped from the end of every series before training.
    holdout: int = 0
    #: Steps at the start of a series left out of the loss while its statistics settle.
    warmup: int = 3
    seed: int = 0
    device: str = "cpu"
    task: Literal["forecast", "classify", "next"] = "forecast"
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
    #: Models trained alike but for their seeds, served as one: the median of their forecasts
    #: (the mean of their class probabilities), :mod:`streamer.model.ensemble`. None: by task and
    #: data (:func:`resolve`): step classifiers of a small training set
    #: (:data:`SMALL_CLASSIFIER_EVENTS`) :data:`SMALL_CLASSIFIER_MEMBERS`, other models 1.
    members: int | None = None
    #: Forecasters: per-entity level and seasonal components over a season of this many steps
    #: (:mod:`streamer.seasonal`); 0: none; None: the usual season of the data's frequency
    #: (monthly 12, quarterly 4, hourly 24...) when the series are long enough for it.
    season: int | None = None
    #: Forecasters: a second, longer season of the components (a multiple of the first, as 168
    #: hours are of 24: Taylor's double seasonal Holt-Winters, as ES-RNN used on hourly data);
    #: 0: none.
    season2: int = 0
    #: The components' ``(alpha, gamma)`` (``(alpha, gamma, delta)`` with a second season);
    #: None: fitted to the training points (the refit takes those of the model early stopping
    #: chose, on which the intervals were calibrated).
    smoothing: tuple[float, ...] | None = None
    #: Next-event models (:mod:`streamer.train.nextevent`): the categorical column whose next
    #: value is predicted (sets ``task="next"``), other categorical input columns, the size of
    #: each column's embedding, how many values a prediction names, and each vocabulary's most
    #: values and the fewest times a value must be seen to be kept (else: out-of-vocabulary).
    next: str | None = None
    categorical: tuple[str, ...] = ()
    embedding: int = 32
    top_k: int = 10
    max_vocabulary: int = 50_000
    min_count: int = 1
    #: Categorical inputs but the predicted column hashed into this many buckets instead of a
    #: vocabulary (open-ended values); 0: vocabularies.
    hash_buckets: int = 0
    #: A two-level softmax over this many groups of the predicted column's values
    #: (:attr:`streamer.model.ModelSpec.groups`); None: :func:`streamer.model.vocab.groups_for`
    #: the vocabulary's size. And the groups a prediction's top values are searched in.
    groups: int | None = None
    groups_searched: int = 4
    #: Rank the whole vocabulary where the top values could lie beyond the searched groups: the
    #: served top k is the model's own (:attr:`streamer.model.ModelSpec.groups_exact`).
    groups_exact: bool = False
    #: The last share of every sequence dropped before training (a next-event evaluation's
    #: held-out events); 0: none.
    holdout_fraction: float = 0.0
    #: Calendar inputs read from ``ds`` (:mod:`streamer.calendar`) for step forecasters and
    #: classifiers; (): none.
    calendar: tuple[str, ...] = ()


#: Classifiers' learning rate at 24 steps per sequence, and the most it grows to with longer ones.
CLASSIFIER_LR = 3e-3
CLASSIFIER_MAX_LR = 1e-2
#: Forecasters: validation targets per step ahead that the default ``val_points`` asks for.
CALIBRATION_TARGETS = 400
#: Forecasters of data sampled more often than daily validate on at least this many days of
#: every series: whole weeks, for early stopping as much as for the intervals. On pedestrian (4
#: hourly sensors; 28 held-out days, each forecast from its midnight, two seeds) four weeks gave
#: a MASE of 1.003 against 1.114 with 100 hours, below seasonal naive's 1.103 on 4 of 4 sensors
#: against 2 of 4; 80% intervals covered 76% of the held-out hours against 79%.
CALIBRATION_DAYS = 28
#: Step classifiers trained on at most this many events are ensembles of this many members by
#: default: on a few hundred sequences one model's accuracy moves with its seed by several
#: points (JapaneseVowels, 270 sequences: 0.905 to 0.957 over ten seeds; OSULeaf, 200 sequences
#: of 427 steps: 0.401 to 0.591 over five, against 0.574 and 0.612 for two ensembles), and five
#: of them train in minutes (OSULeaf's 85,400 events: 6 to 9 on one core, 9 on two).
SMALL_CLASSIFIER_EVENTS = 100_000
SMALL_CLASSIFIER_MEMBERS = 5


def resolve(df: pd.DataFrame, cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the defaults that depend on the task and the data filled in.

    Forecasters: 100 epochs, learning rate 3e-3, patience 10. Classifiers: 200 epochs, patience
    20, and a learning rate of ``3e-3 · √(T/24)``, at most 0.01, for sequences of median length T
    (a window model: its window), measured on sequences of 24 to 427 steps: a gradient through
    hundreds of steps is small, and at 3e-3 a 427-step set had not begun to learn when early
    stopping gave up; at 0.02 it diverged. A step classifier of at most
    :data:`SMALL_CLASSIFIER_EVENTS` training events is an ensemble of
    :data:`SMALL_CLASSIFIER_MEMBERS` by default, any other model one model.

    >>> frame = pd.DataFrame({"unique_id": ["a"] * 96 + ["b"] * 96, "y": 0.0})
    >>> c = resolve(frame, TrainConfig(task="classify", label="label"))
    >>> c.epochs, round(c.lr, 4), c.patience, c.members
    (200, 0.006, 20, 5)
    >>> resolve(frame, TrainConfig(task="classify", label="label", window=8)).members
    1
    >>> resolve(frame, TrainConfig()).lr, resolve(frame, TrainConfig(lr=0.1)).lr
    (0.003, 0.1)

    Forecasters validate on the last ``horizon`` points of every series, or on more of them when
    the series are few: 4 hourly series validate on 100 hours each, 152 monthly ones on their
    horizon.

    >>> resolve(frame, TrainConfig(horizon=3)).val_points  # 2 series of 96: a fifth of 96
    19
    """
    val_points = cfg.val_points
    if cfg.next is not None:
        if cfg.calendar:
            raise ConfigError("calendar inputs are for forecasters and step classifiers")
        return replace(
            cfg,
            task="next",
            epochs=cfg.epochs or 60,
            lr=cfg.lr if cfg.lr is not None else 3e-3,
            patience=cfg.patience or 5,
            members=cfg.members or 1,
            calendar=(),
        )
    members = 1
    if cfg.task == "forecast" and not cfg.window:
        epochs, lr, patience = 100, 3e-3, 10
        if val_points is None:
            sizes = df.groupby("unique_id").size() - cfg.holdout
            want = math.ceil(CALIBRATION_TARGETS / max(len(sizes), 1))
            want = max(want, CALIBRATION_DAYS * calendar.per_day(_freq(df)))
            val_points = max(cfg.horizon, min(want, int(sizes.median()) // 5))
    else:
        length = cfg.window or float(df.groupby("unique_id").size().median())
        epochs, patience = 200, 20
        lr = min(CLASSIFIER_MAX_LR, CLASSIFIER_LR * math.sqrt(max(length, 24) / 24))
        if not cfg.window and len(df) <= SMALL_CLASSIFIER_EVENTS:
            members = SMALL_CLASSIFIER_MEMBERS
    return replace(
        cfg,
        epochs=cfg.epochs or epochs,
        lr=cfg.lr if cfg.lr is not None else lr,
        patience=cfg.patience or patience,
        val_points=val_points,
        members=cfg.members or members,
        calendar=calendar.check(cfg.calendar),
    )


def _freq(df: pd.DataFrame) -> str | None:
    """The data's frequency (:func:`streamer.serve.times.infer_freq`), None without times."""
    from streamer.serve.times import infer_freq

    if "ds" not in df.columns:
        return None
    return infer_freq(pd.to_datetime(df["ds"]), df["unique_id"])
