"""The model: trained over whole sequences, served one step at a time with the same parameters.

Torch only, no I/O. Shapes: B batch (entities), T time, I inputs, H hidden, L layers, K horizon.

:class:`StackedLSTM` *is* a ``torch.nn.LSTM`` (same parameter names ``weight_ih_l{k}``,
``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, same gate order: input, forget, cell,
output), so a ``state_dict`` moves between them unchanged. ``forward`` runs the fused sequence kernel
for training; ``step`` advances a batch of independent entities by one event each, which is what
serving does. Stepping a sequence one event at a time equals ``forward`` over the whole sequence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Forecaster", "ModelSpec", "StackedLSTM", "State"]

#: ``(h, c)``, each ``(L, B, H)``.
State = tuple[Tensor, Tensor]


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        """The scaled target plus the features."""
        return 1 + len(self.features)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"] = list(self.features)
        d["feature_mean"] = list(self.feature_mean)
        d["feature_std"] = list(self.feature_std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(
            cell=str(d.get("cell", "lstm")),
            hidden_size=int(d["hidden_size"]),
            num_layers=int(d["num_layers"]),
            horizon=int(d["horizon"]),
            features=tuple(d.get("features", ())),
            feature_mean=tuple(float(v) for v in d.get("feature_mean", ())),
            feature_std=tuple(float(v) for v in d.get("feature_std", ())),
            dropout=float(d.get("dropout", 0.0)),
            extra=dict(d.get("extra", {})),
        )


class StackedLSTM(nn.LSTM):
    """``torch.nn.LSTM`` (batch first) plus :meth:`step` for serving."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float = 0.0):
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )

    def zero_state(self, batch: int, device: torch.device | None = None) -> State:
        z = torch.zeros(self.num_layers, batch, self.hidden_size, device=device)
        return z, z.clone()

    def step(self, x: Tensor, state: State, fused: bool = False) -> tuple[Tensor, State]:
        """One event for each of B entities: x ``(B, I)``, h and c ``(L, B, H)`` -> y ``(B, H)``.

        Same arithmetic as one time step of ``forward``; dropout between layers is a training
        device and is not applied here, as ``forward`` does not apply it in eval mode.
        ``fused`` runs the fused sequence kernel (cuDNN on a GPU) on a sequence of length 1
        instead of one ``lstm_cell`` call per layer: a large fixed cost per call that pays off
        on a GPU and for large batches only (see :attr:`streamer.settings.Settings.fused_cell_from`).
        """
        h, c = state
        if fused:
            out, (h_next, c_next) = nn.LSTM.forward(self, x.unsqueeze(1), (h, c))
            return out[:, 0], (h_next, c_next)
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        inp = x
        for k in range(self.num_layers):
            hk, ck = torch.lstm_cell(
                inp,
                (h[k], c[k]),
                getattr(self, f"weight_ih_l{k}"),
                getattr(self, f"weight_hh_l{k}"),
                getattr(self, f"bias_ih_l{k}"),
                getattr(self, f"bias_hh_l{k}"),
            )  # (B, H) each
            hs.append(hk)
            cs.append(ck)
            inp = hk
        return inp, (torch.stack(hs), torch.stack(cs))


class Forecaster(nn.Module):
    """The recurrent core plus a direct multi-horizon head: the next K values, in scaled units."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.cell != "lstm":
            raise ValueError(f"unknown cell {spec.cell!r}; this version serves 'lstm'")
        self.spec = spec
        self.rnn = StackedLSTM(spec.input_size, spec.hidden_size, spec.num_layers, spec.dropout)
        self.head = nn.Linear(spec.hidden_size, spec.horizon)

    def forward(self, x_seq: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Training path: x_seq ``(B, T, I)`` -> forecasts ``(B, T, K)`` and the final state."""
        out, (h, c) = self.rnn(x_seq, state)  # (B, T, H), (L, B, H)
        return self.head(out), (h, c)

    def step(self, x: Tensor, state: State, fused: bool = False) -> tuple[Tensor, State]:
        """Serving path: x ``(B, I)`` -> forecasts ``(B, K)`` and the next state."""
        out, new_state = self.rnn.step(x, state, fused)  # (B, H)
        return self.head(out), new_state
