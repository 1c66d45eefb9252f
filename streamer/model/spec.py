"""A model's description: everything needed to rebuild it around its weights (no torch here).

A :class:`ModelSpec` travels in an artifact's ``spec.json`` and in the registry; the network it
describes is :class:`streamer.model.recurrent.SequenceModel`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from streamer import calendar, seasonal
from streamer.errors import ConfigError, DataError
from streamer.model import nextevent
from streamer.model.vocab import MAX_VOCABULARY, Vocabulary

__all__ = ["CELL_NAMES", "ModelSpec", "Scaling", "Task"]

Task = Literal["forecast", "classify", "next"]
Scaling = Literal["entity", "none"]
#: The recurrent cores (:data:`streamer.model.recurrent.CELLS`).
CELL_NAMES = ("lstm", "gru", "rnn")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model around its weights."""

    cell: str = "lstm"
    hidden_size: int = 32
    num_layers: int = 2
    horizon: int = 1
    features: tuple[str, ...] = ()
    #: Global mean and std of each feature column, from the training data.
    feature_mean: tuple[float, ...] = ()
    feature_std: tuple[float, ...] = ()
    dropout: float = 0.0
    #: ``forecast``: the next ``horizon`` values. ``classify``: probabilities of ``classes``.
    task: Task = "forecast"
    classes: tuple[str, ...] = ()
    #: ``entity``: y is scaled by the entity's running statistics (see :mod:`streamer.scaling`);
    #: ``none``: y goes in as it is (data that is already normalised).
    scaling: Scaling = "entity"
    #: Window models: events per window (0: a step model), and a feature whose non-zero value
    #: closes a window early (the end marker; it is not an input of the model).
    window: int = 0
    window_end: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The series' frequency (a pandas alias: ``MS``, ``D``, ``h``...), inferred in training:
    #: forecasts then carry the times of their steps. None: unknown or irregular.
    freq: str | None = None
    #: Forecasters: the levels (percent) of the prediction intervals served with every forecast,
    #: and the offsets of their bounds, ``(levels, horizon)`` each, in the entity's scaled units
    #: (calibrated in training, see :mod:`streamer.model.intervals`).
    levels: tuple[int, ...] = ()
    interval_lo: tuple[tuple[float, ...], ...] = ()
    interval_hi: tuple[tuple[float, ...], ...] = ()
    #: An ensemble of this many models of this cell and shape, side by side in one core with
    #: block-diagonal weights (:mod:`streamer.model.ensemble`); 1: a single model.
    members: int = 1
    #: Forecasters: per-entity level and seasonal components over a season of this many steps,
    #: kept in the state and taken out of what the network sees (:mod:`streamer.seasonal`), with
    #: their smoothing parameters ``(alpha, gamma)``, fitted in training; 0: none. ``season2``:
    #: a second, longer season (a multiple of the first, as a week of hours is of a day) with
    #: indices of its own, smoothed by a third parameter ``delta``; 0: none.
    season: int = 0
    smoothing: tuple[float, ...] = (0.0, 0.0)
    season2: int = 0
    #: Categorical input columns (their values are strings), each with its vocabulary (learnt in
    #: training, :mod:`streamer.model.vocab`: id 0 is out-of-vocabulary, ids 1.. the values) and
    #: an embedding of ``embedding`` values per column.
    categorical: tuple[str, ...] = ()
    vocabularies: tuple[tuple[str, ...], ...] = ()
    embedding: int = 0
    #: Next-event models (``task="next"``): the categorical column whose next value they
    #: predict (a softmax over its vocabulary, out-of-vocabulary included), and how many of the
    #: most likely values each prediction names.
    next: str | None = None
    top_k: int = 10
    #: Categorical inputs other than the predicted column hashed into this many buckets instead
    #: of a vocabulary (open-ended values: ids, URLs...); 0: vocabularies.
    hash_buckets: int = 0
    #: Next-event models over large vocabularies: a two-level softmax. The predicted column's
    #: ids (most frequent first) fall in ``groups`` groups of consecutive ids, and a value's
    #: probability is its group's times its own within the group; a prediction's top values are
    #: searched in its ``groups_searched`` most likely groups
    #: (:meth:`~streamer.model.recurrent.SequenceModel.next_served`), and with ``groups_exact``
    #: over the whole vocabulary where they could lie beyond those.
    #: 0: one softmax over the whole vocabulary.
    groups: int = 0
    groups_searched: int = 4
    groups_exact: bool = False
    #: Step models: calendar inputs read from each event's ``ds`` (``hour``, ``weekday``,
    #: ``month``; two inputs each, after the features, see :mod:`streamer.calendar`); (): none.
    calendar: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.cell not in CELL_NAMES:
            raise ConfigError(f"unknown cell {self.cell!r}; one of {', '.join(CELL_NAMES)}")
        if self.task not in ("forecast", "classify", "next"):
            raise ConfigError(f"unknown task {self.task!r}; forecast, classify or next")
        if self.task == "classify" and len(self.classes) < 2:
            raise ConfigError("a classifier needs at least two classes")
        if self.scaling not in ("entity", "none"):
            raise ConfigError(f"unknown scaling {self.scaling!r}; entity or none")
        if self.window < 0 or (self.window_end and not self.window):
            raise ConfigError("window must be positive for a window model (0 for a step model)")
        if self.window_end and self.window_end not in self.features:
            raise ConfigError(f"the window end marker {self.window_end!r} must be a feature")
        if self.members < 1 or (self.members > 1 and self.window):
            raise ConfigError("an ensemble has at least one member and is no window model")
        if self.levels:
            if self.task != "forecast":
                raise ConfigError("prediction intervals are for forecasters")
            if not all(0 < v < 100 for v in self.levels):
                raise ConfigError(f"interval levels are percents between 0 and 100: {self.levels}")
            shape = {(len(b), *map(len, b)) for b in (self.interval_lo, self.interval_hi)}
            if shape != {(len(self.levels), *[self.horizon] * len(self.levels))}:
                raise ConfigError("interval offsets need one row of horizon values per level")
        if len(self.vocabularies) != len(self.categorical) or (
            self.categorical and self.embedding < 1
        ):
            raise ConfigError("each categorical column needs a vocabulary and an embedding size")
        if set(self.categorical) & {*self.features, "unique_id", "ds", "y"} or len(
            set(self.categorical)
        ) != len(self.categorical):
            raise ConfigError("categorical columns are distinct and no feature, id, time or y")
        if (self.task == "next") != (self.next is not None):
            raise ConfigError("a next-event model (task next) names the column it predicts")
        if self.next is not None:
            if self.next not in self.categorical:
                raise ConfigError(f"the predicted column {self.next!r} must be categorical")
            if self.window or self.levels or self.season or self.members > 1:
                raise ConfigError(
                    "a next-event model is a step model: no window, intervals, "
                    "components or ensemble"
                )
            if not 1 <= self.top_k <= 1000:
                raise ConfigError(f"top_k is 1 to 1,000, not {self.top_k}")
            if not 0 <= self.hash_buckets <= MAX_VOCABULARY:
                raise ConfigError(f"hash buckets are 0 to {MAX_VOCABULARY:,}")
            if self.groups and not 2 <= self.groups <= self.outputs // 2:
                raise ConfigError(
                    f"a two-level softmax over {self.outputs:,} ids has 2 to "
                    f"{self.outputs // 2:,} groups, not {self.groups}"
                )
            if self.groups_searched < 1:
                raise ConfigError("a two-level softmax searches at least one group")
        elif self.groups:
            raise ConfigError("a two-level softmax (groups) is for next-event models")
        elif self.categorical:
            raise ConfigError("categorical inputs are for next-event models (task next)")
        if self.calendar:
            try:
                calendar.check(self.calendar)
            except DataError as e:
                raise ConfigError(str(e)) from None
            if self.window or self.task == "next":
                raise ConfigError("calendar inputs are for step forecasters and classifiers")
        wrong = seasonal.check(self.season, self.season2)
        if wrong:
            raise ConfigError(wrong)
        if self.season:
            if self.task != "forecast" or self.window or self.scaling != "entity":
                raise ConfigError(
                    "seasonal components are for step forecasters with entity scaling"
                )
            want = "(alpha, gamma, delta)" if self.season2 else "(alpha, gamma)"
            if len(self.smoothing) != 2 + bool(self.season2) or not all(
                0 <= v <= 1 for v in self.smoothing
            ):
                raise ConfigError(f"smoothing is {want} in [0, 1]: {self.smoothing}")

    @property
    def input_features(self) -> tuple[str, ...]:
        """The features the model sees (all but a window end marker)."""
        return tuple(f for f in self.features if f != self.window_end)

    @property
    def input_size(self) -> int:
        """The recurrent core's inputs: the (scaled) target (a next-event model has none), the
        input features, the calendar inputs and the embeddings of the categorical columns."""
        target = 0 if self.task == "next" else 1
        return (
            target
            + len(self.input_features)
            + 2 * len(self.calendar)
            + self.embedding * len(self.categorical)
        )

    @property
    def raw_input_size(self) -> int:
        """The model's input rows as built from events: the target (none for a next-event
        model), the input features, then the categorical columns' ids (one value each)."""
        return self.input_size - (self.embedding - 1) * len(self.categorical)

    @property
    def outputs(self) -> int:
        """Values per prediction: the horizon, one probability per class, or one per id of the
        predicted column's vocabulary (out-of-vocabulary first)."""
        if self.task == "next":
            return 1 + len(self.vocabularies[self.categorical.index(self.next or "")])
        return len(self.classes) if self.task == "classify" else self.horizon

    @property
    def vocabulary(self) -> dict[str, Vocabulary]:
        """Each categorical column's vocabulary."""
        return {
            c: Vocabulary(v, self.hash_buckets if c != self.next else 0)
            for c, v in zip(self.categorical, self.vocabularies, strict=True)
        }

    @property
    def served_outputs(self) -> int:
        """Values per served prediction: the outputs, then each interval level's lows and highs;
        for a next-event model the ids and probabilities of its top values, a surprise and a
        rank (:mod:`streamer.model.nextevent`)."""
        if self.task == "next":
            return 2 * self.served_top_k + 2
        return self.outputs * (1 + 2 * len(self.levels))

    @property
    def raw_outputs(self) -> int:
        """Values per event :meth:`~streamer.model.recurrent.SequenceModel.step` gives (a
        next-event model's served)."""
        return self.served_outputs if self.task == "next" else self.outputs * self.members

    @property
    def state_tensors(self) -> int:
        """Tensors in an entity's stored state: h and c for the LSTM, h for the others, and the
        buffered inputs for a window model."""
        return 1 if self.window or self.cell != "lstm" else 2

    @property
    def components(self) -> int:
        """float64 values of an entity's level and seasonal components in its state (0: none)."""
        if self.task == "next":
            return nextevent.components(self.served_top_k)
        return seasonal.width(self.season, self.season2)

    @property
    def group_size(self) -> int:
        """Ids per group of a two-level softmax (the last group may have fewer)."""
        return -(-self.outputs // self.groups) if self.groups else self.outputs

    @property
    def group_count(self) -> int:
        """Groups of a two-level softmax as the head has them (``groups``, or fewer when the ids
        fill fewer groups of :attr:`group_size`); 0: one softmax."""
        return -(-self.outputs // self.group_size) if self.groups else 0

    @property
    def served_top_k(self) -> int:
        """Values a next-event prediction names: ``top_k``, or all the known ones if fewer."""
        return min(self.top_k, self.outputs - 1)

    @property
    def state_shape(self) -> tuple[int, int]:
        """``(rows, width)`` of each stored state tensor: ``(L, H)``, or for a window model its
        buffer of ``window`` inputs as one row."""
        if self.window:
            return 1, self.window * self.input_size
        return self.num_layers, self.hidden_size * self.members

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("features", "feature_mean", "feature_std", "classes", "levels"):
            d[k] = list(d[k])
        for k in ("interval_lo", "interval_hi"):
            d[k] = [list(row) for row in d[k]]
        # (the versions of models saved before these existed stay the same)
        if d["freq"] is None:
            del d["freq"]
        if not self.levels:
            del d["levels"], d["interval_lo"], d["interval_hi"]
        if self.members == 1:
            del d["members"]
        if not self.season:
            del d["season"], d["smoothing"]
        else:
            d["smoothing"] = list(self.smoothing)
        if not self.season2:
            del d["season2"]  # (artifacts from before it read the same)
        if not self.categorical:
            del d["categorical"], d["vocabularies"], d["embedding"]
        else:
            d["categorical"] = list(self.categorical)
            d["vocabularies"] = [list(v) for v in self.vocabularies]
        if self.next is None:
            del d["next"], d["top_k"]
        if not self.hash_buckets:
            del d["hash_buckets"]
        if not self.groups:
            del d["groups"], d["groups_searched"], d["groups_exact"]
        elif not self.groups_exact:
            del d["groups_exact"]  # (artifacts from before it read the same)
        if self.calendar:
            d["calendar"] = list(self.calendar)
        else:
            del d["calendar"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(
            cell=str(d.get("cell", "lstm")),
            hidden_size=int(d["hidden_size"]),
            num_layers=int(d["num_layers"]),
            horizon=int(d.get("horizon", 1)),
            features=tuple(d.get("features", ())),
            feature_mean=tuple(float(v) for v in d.get("feature_mean", ())),
            feature_std=tuple(float(v) for v in d.get("feature_std", ())),
            dropout=float(d.get("dropout", 0.0)),
            task=d.get("task", "forecast"),
            classes=tuple(str(c) for c in d.get("classes", ())),
            scaling=d.get("scaling", "entity"),
            window=int(d.get("window", 0)),
            window_end=d.get("window_end"),
            extra=dict(d.get("extra", {})),
            freq=d.get("freq"),
            levels=tuple(int(v) for v in d.get("levels", ())),
            interval_lo=tuple(tuple(float(v) for v in row) for row in d.get("interval_lo", ())),
            interval_hi=tuple(tuple(float(v) for v in row) for row in d.get("interval_hi", ())),
            members=int(d.get("members", 1)),
            season=int(d.get("season", 0)),
            smoothing=tuple(float(v) for v in d.get("smoothing", (0.0, 0.0))),
            season2=int(d.get("season2", 0)),
            categorical=tuple(str(c) for c in d.get("categorical", ())),
            vocabularies=tuple(tuple(str(v) for v in vs) for vs in d.get("vocabularies", ())),
            embedding=int(d.get("embedding", 0)),
            next=d.get("next"),
            top_k=int(d.get("top_k", 10)),
            hash_buckets=int(d.get("hash_buckets", 0)),
            groups=int(d.get("groups", 0)),
            groups_searched=int(d.get("groups_searched", 4)),
            groups_exact=bool(d.get("groups_exact", False)),
            calendar=tuple(str(c) for c in d.get("calendar", ())),
        )
