"""The models: trained over whole sequences, served one step at a time with the same parameters.

Torch only, no I/O. Shapes: B batch (entities), T time, I inputs, H hidden, L layers, K outputs
(the forecast horizon, or the number of classes).

Three recurrent cores, each *is* its ``torch.nn`` module (same parameter names ``weight_ih_l{k}``,
``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, same gate layout), so a ``state_dict`` moves
between them unchanged: :class:`StackedLSTM` (``nn.LSTM``: hidden state h and cell state c),
:class:`StackedGRU` (``nn.GRU``) and :class:`StackedRNN` (``nn.RNN``, tanh), whose state is h alone.
``forward`` runs the fused sequence kernel for training; ``step`` advances a batch of independent
entities by one event each, which is what serving does. Stepping a sequence one event at a time equals
``forward`` over the whole sequence.

A state is always the pair ``(h, c)``, each ``(L, B, H)``; for the GRU and the plain RNN ``c`` is
empty, ``(0, B, H)``, and stored as nothing.

:class:`SequenceModel` puts a head on a core: a direct multi-horizon forecast (``task="forecast"``,
K = horizon, in the entity's scaled units) or class logits (``task="classify"``, K = classes). A
*window* model (``window > 0``) is bidirectional and sees a closed window of events at once instead
of stepping: it scores the window from the last forward and the first backward hidden state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from streamer import seasonal
from streamer.errors import ConfigError
from streamer.model import nextevent, nexthead
from streamer.model.vocab import MAX_VOCABULARY, Vocabulary

__all__ = [
    "CELLS",
    "ModelSpec",
    "SequenceModel",
    "StackedGRU",
    "StackedLSTM",
    "StackedRNN",
    "State",
    "recurrent",
]

#: ``(h, c)``, each ``(L, B, H)``; ``c`` is ``(0, B, H)`` for cells without a cell state.
State = tuple[Tensor, Tensor]
Task = Literal["forecast", "classify", "next"]
Scaling = Literal["entity", "none"]


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
    #: their smoothing parameters ``(alpha, gamma)``, fitted in training; 0: none.
    season: int = 0
    smoothing: tuple[float, float] = (0.0, 0.0)
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
    #: searched in its ``groups_searched`` most likely groups (:meth:`SequenceModel.next_served`),
    #: and with ``groups_exact`` over the whole vocabulary where they could lie beyond those.
    #: 0: one softmax over the whole vocabulary.
    groups: int = 0
    groups_searched: int = 4
    groups_exact: bool = False

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ConfigError(f"unknown cell {self.cell!r}; one of {', '.join(CELLS)}")
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
        if self.season:
            if self.season < 2 or self.season > 10_000:
                raise ConfigError(f"a season has 2 to 10,000 steps, not {self.season}")
            if self.task != "forecast" or self.window or self.scaling != "entity":
                raise ConfigError(
                    "seasonal components are for step forecasters with entity scaling"
                )
            if len(self.smoothing) != 2 or not all(0 <= v <= 1 for v in self.smoothing):
                raise ConfigError(f"smoothing is (alpha, gamma) in [0, 1]: {self.smoothing}")

    @property
    def input_features(self) -> tuple[str, ...]:
        """The features the model sees (all but a window end marker)."""
        return tuple(f for f in self.features if f != self.window_end)

    @property
    def input_size(self) -> int:
        """The recurrent core's inputs: the (scaled) target (a next-event model has none), the
        input features and the embeddings of the categorical columns."""
        target = 0 if self.task == "next" else 1
        return target + len(self.input_features) + self.embedding * len(self.categorical)

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
        """Values per event :meth:`SequenceModel.step` gives (a next-event model's served)."""
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
        return seasonal.width(self.season)

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
            smoothing=tuple(float(v) for v in d.get("smoothing", (0.0, 0.0))),  # type: ignore[arg-type]
            categorical=tuple(str(c) for c in d.get("categorical", ())),
            vocabularies=tuple(tuple(str(v) for v in vs) for vs in d.get("vocabularies", ())),
            embedding=int(d.get("embedding", 0)),
            next=d.get("next"),
            top_k=int(d.get("top_k", 10)),
            hash_buckets=int(d.get("hash_buckets", 0)),
            groups=int(d.get("groups", 0)),
            groups_searched=int(d.get("groups_searched", 4)),
            groups_exact=bool(d.get("groups_exact", False)),
        )


class _Stepping:
    """``step`` for the stacked cores: one event for each of B entities."""

    num_layers: int
    hidden_size: int
    _cell: Any  # the torch cell function of one layer
    _base: Any  # the torch module class
    _options: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ):
        self._base.__init__(
            self,
            input_size,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
            **self._options,
        )

    def zero_state(self, batch: int, device: torch.device | None = None) -> State:
        h = torch.zeros(self.num_layers, batch, self.hidden_size, device=device)
        rows = self.num_layers if isinstance(self, nn.LSTM) else 0
        return h, torch.zeros(rows, batch, self.hidden_size, device=device)

    def step(self, x: Tensor, state: State, fused: bool = False) -> tuple[Tensor, State]:
        """x ``(B, I)``, h and c ``(L, B, H)`` -> y ``(B, H)`` and the next state.

        Same arithmetic as one time step of ``forward``; dropout between layers is a training
        device and is not applied here, as ``forward`` does not apply it in eval mode.
        ``fused`` runs the fused sequence kernel (cuDNN on a GPU) on a sequence of length 1
        instead of one cell call per layer: a large fixed cost per call that pays off on a GPU
        and for large batches only (see :attr:`streamer.settings.Settings.fused_cell_from`).
        """
        h, c = state
        lstm = isinstance(self, nn.LSTM)
        if fused:
            out, new = self.sequence(x.unsqueeze(1), state)
            return out[:, 0], new
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        inp = x
        for k in range(self.num_layers):
            weights = (
                getattr(self, f"weight_ih_l{k}"),
                getattr(self, f"weight_hh_l{k}"),
                getattr(self, f"bias_ih_l{k}"),
                getattr(self, f"bias_hh_l{k}"),
            )
            if lstm:
                hk, ck = type(self)._cell(inp, (h[k], c[k]), *weights)  # (B, H) each
                cs.append(ck)
            else:
                hk = type(self)._cell(inp, h[k], *weights)
            hs.append(hk)
            inp = hk
        return inp, (torch.stack(hs), torch.stack(cs) if lstm else c)

    def sequence(self, x_seq: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """The fused kernel over x_seq ``(B, T, I)`` -> outputs ``(B, T, H)`` and the final state."""
        if isinstance(self, nn.LSTM):
            out, (h, c) = nn.LSTM.forward(self, x_seq, state)
            return out, (h, c)
        out, h = self._base.forward(self, x_seq, None if state is None else state[0])
        return out, (h, h.new_zeros((0, *h.shape[1:])))


class StackedLSTM(_Stepping, nn.LSTM):
    """``torch.nn.LSTM`` (batch first) plus :meth:`step`. Gates: input, forget, cell, output."""

    _cell = staticmethod(torch.lstm_cell)
    _base = nn.LSTM


class StackedGRU(_Stepping, nn.GRU):
    """``torch.nn.GRU`` (batch first) plus :meth:`step`. Gates: reset, update, new."""

    _cell = staticmethod(torch.gru_cell)
    _base = nn.GRU


class StackedRNN(_Stepping, nn.RNN):
    """``torch.nn.RNN`` with tanh (batch first) plus :meth:`step`: no gates at all."""

    _cell = staticmethod(torch.rnn_tanh_cell)
    _base = nn.RNN
    _options: ClassVar[dict[str, Any]] = {"nonlinearity": "tanh"}


CELLS: dict[str, type[StackedLSTM | StackedGRU | StackedRNN]] = {
    "lstm": StackedLSTM,
    "gru": StackedGRU,
    "rnn": StackedRNN,
}


def recurrent(spec: ModelSpec) -> StackedLSTM | StackedGRU | StackedRNN:
    """The recurrent core a spec describes."""
    return CELLS[spec.cell](
        spec.input_size,
        spec.hidden_size * spec.members,
        spec.num_layers,
        spec.dropout,
        bidirectional=bool(spec.window),
    )


class SequenceModel(nn.Module):
    """A recurrent core and its head (see the module docstring)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.rnn = recurrent(spec)
        width = spec.hidden_size * spec.members * (2 if spec.window else 1)
        groups = spec.group_count
        if groups:  # a two-level softmax: the ids' logits within their groups, the groups'
            self.head = nn.Linear(width, groups * spec.group_size)
            self.group_head: nn.Linear | None = nn.Linear(width, groups)
            pad = torch.zeros(groups * spec.group_size)
            pad[spec.outputs :] = -torch.inf  # (the last group's places beyond the vocabulary)
            self.register_buffer("pad", pad.view(groups, spec.group_size), persistent=False)
            self.pad: Tensor
        else:
            self.head = nn.Linear(width, spec.outputs * spec.members)
            self.group_head = None
        #: one embedding per categorical column, over its ids (out-of-vocabulary included)
        self.embeddings = nn.ModuleList(
            nn.Embedding(len(v), spec.embedding) for v in spec.vocabulary.values()
        )

    def _embedded(self, x: Tensor) -> Tensor:
        """Raw input rows ``(..., raw I)`` with the categorical ids last -> the core's inputs
        ``(..., I)``, each id replaced by its embedding."""
        if not self.embeddings:
            return x
        n = len(self.embeddings)
        ids = x[..., -n:].long()
        parts = [x[..., :-n]] + [e(ids[..., j]) for j, e in enumerate(self.embeddings)]
        return torch.cat(parts, dim=-1)

    def hidden(self, x_seq: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """The core over raw input rows ``(B, T, raw I)``: the top layer's hidden state after
        each event ``(B, T, H)`` and the final state."""
        return self.rnn.sequence(self._embedded(x_seq), state)

    def forward(self, x_seq: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Training path of a step model: x_seq ``(B, T, I)`` -> raw outputs ``(B, T, K)``
        (scaled forecasts, or class or next-event logits) and the final state."""
        out, new = self.hidden(x_seq, state)  # (B, T, H)
        return self.logits(out), new

    def logits(self, out: Tensor) -> Tensor:
        """The head over hidden states ``(..., H)``: raw outputs ``(..., K)``. A two-level
        softmax gives each id's log-probability (logits up to a constant, like any other's)."""
        if self.group_head is None:
            raw: Tensor = self.head(out)
            return raw
        group = torch.log_softmax(self.group_head(out), -1)  # (..., G)
        joint = group[..., None] + torch.log_softmax(self.group_values(out), -1)  # (..., G, S)
        logits: Tensor = joint.flatten(-2)[..., : self.spec.outputs]
        return logits

    def group_values(self, out: Tensor) -> Tensor:
        """A two-level softmax's logits of every value within its group ``(..., G, S)`` (the
        last group's places beyond the vocabulary: -inf)."""
        shape = (self.spec.group_count, self.spec.group_size)
        values: Tensor = self.head(out).unflatten(-1, shape) + self.pad
        return values

    def step(self, x: Tensor, state: State, fused: bool = False) -> tuple[Tensor, State]:
        """Serving path of a step model: x ``(B, I)`` -> raw outputs ``(B, K)``, next state
        (a next-event model's are already served: :meth:`next_served`)."""
        out, new = self.rnn.step(self._embedded(x), state, fused)  # (B, H)
        if self.spec.task != "next":
            return self.head(out), new
        spec = self.spec
        ids = x[:, spec.categorical.index(spec.next or "") - len(spec.categorical)].long()
        return self.next_served(out, state[0][-1], ids), new

    def next_served(self, out: Tensor, before: Tensor, ids: Tensor) -> Tensor:
        """A next-event model's served outputs ``(N, 2k + 2)`` from the top layer's hidden state
        after each event ``out`` ``(N, H)`` and before it ``before`` ``(N, H)``, and each event's
        id ``(N,)`` (:func:`streamer.model.nexthead.served`)."""
        return nexthead.served(self, out, before, ids)

    def window_logits(self, x_win: Tensor) -> Tensor:
        """A window model over closed windows of one length: x_win ``(B, T, I)`` -> ``(B, K)``,
        from the forward direction's last and the backward direction's first hidden state."""
        out: Tensor = self.rnn(x_win)[0]  # (B, T, 2H)
        hidden = self.spec.hidden_size
        last = torch.cat([out[:, -1, :hidden], out[:, 0, hidden:]], dim=1)
        logits: Tensor = self.head(last)
        return logits

    def serve(self, raw: Tensor) -> Tensor:
        """Raw outputs ``(..., M·K)`` as served ``(..., K)``: class probabilities for a classifier
        (an ensemble's: the mean of its members'), forecasts as they are (an ensemble's: the median
        of its members', the mean of the middle two for an even count)."""
        if self.spec.task == "next":  # (served by step already)
            return raw
        classify = self.spec.task == "classify"
        m = self.spec.members
        if m == 1:
            return torch.softmax(raw, dim=-1) if classify else raw
        each = raw.reshape(*raw.shape[:-1], m, self.spec.outputs)  # (..., M, K)
        if classify:
            return torch.softmax(each, dim=-1).mean(dim=-2)
        return torch.quantile(each, 0.5, dim=-2)
