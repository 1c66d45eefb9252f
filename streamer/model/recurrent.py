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

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from streamer.model import nexthead
from streamer.model.spec import CELL_NAMES, ModelSpec, Scaling, Task

__all__ = [
    "CELLS",
    "ModelSpec",
    "Scaling",
    "SequenceModel",
    "StackedGRU",
    "StackedLSTM",
    "StackedRNN",
    "State",
    "Task",
    "recurrent",
]

#: ``(h, c)``, each ``(L, B, H)``; ``c`` is ``(0, B, H)`` for cells without a cell state.
State = tuple[Tensor, Tensor]


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


CELLS: dict[str, type[StackedLSTM | StackedGRU | StackedRNN]] = dict(
    zip(CELL_NAMES, (StackedLSTM, StackedGRU, StackedRNN), strict=True)
)


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
