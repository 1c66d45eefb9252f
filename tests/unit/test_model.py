"""The project's first test: serving one event at a time equals nn.LSTM over the whole sequence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from streamer.errors import ConfigError
from streamer.model import ModelSpec, SequenceModel, StackedLSTM


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("hidden", [8, 32, 64])
def test_step_by_step_equals_nn_lstm(layers: int, hidden: int) -> None:
    torch.manual_seed(layers * 100 + hidden)
    ref = nn.LSTM(input_size=3, hidden_size=hidden, num_layers=layers, batch_first=True)
    cell = StackedLSTM(3, hidden, layers)
    cell.load_state_dict(ref.state_dict(), strict=True)  # same names, same layout
    x = torch.randn(5, 40, 3) * 2  # (B, T, I)
    with torch.no_grad():
        out_ref, (h_ref, c_ref) = ref(x)
        state = cell.zero_state(5)
        outs = []
        for t in range(x.shape[1]):
            y, state = cell.step(x[:, t], state)
            outs.append(y)
    out = torch.stack(outs, dim=1)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(state[0], h_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(state[1], c_ref, atol=1e-5, rtol=0)
    assert h_ref.abs().max() > 0.1  # the comparison is not between two near-zero tensors


def test_parameters_are_nn_lstm_parameters() -> None:
    cell = StackedLSTM(4, 16, 2)
    ref = nn.LSTM(4, 16, 2, batch_first=True)
    assert list(cell.state_dict()) == list(ref.state_dict())
    for (name, a), b in zip(cell.state_dict().items(), ref.state_dict().values(), strict=True):
        assert a.shape == b.shape, name
    # gate order input, forget, cell, output: 4*H rows in weight_ih
    assert cell.weight_ih_l0.shape == (4 * 16, 4)


def test_step_from_a_nonzero_state_continues_the_sequence() -> None:
    torch.manual_seed(1)
    model = SequenceModel(ModelSpec(hidden_size=12, num_layers=2, horizon=4)).eval()
    x = torch.randn(3, 30, 1)
    with torch.no_grad():
        full, (h_full, c_full) = model(x)
        _, state = model(x[:, :17])  # the first 17 steps through the fused kernel
        outs = []
        for t in range(17, 30):  # the rest one at a time, as after a restart
            y, state = model.step(x[:, t], state)
            outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1), full[:, 17:], atol=1e-5, rtol=0)
    torch.testing.assert_close(state[0], h_full, atol=1e-5, rtol=0)
    torch.testing.assert_close(state[1], c_full, atol=1e-5, rtol=0)


def test_forecast_head_gives_horizon_values() -> None:
    model = SequenceModel(ModelSpec(hidden_size=8, num_layers=1, horizon=5, features=("a", "b")))
    y, (h, c) = model.step(torch.zeros(7, 3), model.rnn.zero_state(7))
    assert y.shape == (7, 5) and h.shape == (1, 7, 8) and c.shape == (1, 7, 8)


def test_unknown_cell_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown cell"):
        SequenceModel(ModelSpec(cell="transformer"))


def test_the_fused_step_equals_the_cell_step_and_nn_lstm() -> None:
    torch.manual_seed(5)
    rnn = StackedLSTM(3, 16, 2).eval()
    x = torch.randn(9, 4, 3)  # (B, T, I)
    with torch.no_grad():
        full, (h_full, c_full) = rnn(x)
        for fused in (False, True):
            h, c = rnn.zero_state(9)
            for t in range(4):
                y, (h, c) = rnn.step(x[:, t], (h, c), fused=fused)
                torch.testing.assert_close(y, full[:, t], atol=1e-6, rtol=0)
            torch.testing.assert_close(h, h_full, atol=1e-6, rtol=0)
            torch.testing.assert_close(c, c_full, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("cell", "ref"), [("gru", nn.GRU), ("rnn", nn.RNN)])
@pytest.mark.parametrize("fused", [False, True])
def test_gru_and_rnn_steps_equal_their_torch_modules(cell: str, ref: type, fused: bool) -> None:
    torch.manual_seed(3)
    model = SequenceModel(ModelSpec(cell=cell, hidden_size=16, num_layers=2, horizon=2)).eval()
    torch_rnn = ref(1, 16, 2, batch_first=True)
    torch_rnn.load_state_dict(model.rnn.state_dict(), strict=True)  # same names and layout
    x = torch.randn(6, 25, 1) * 2
    with torch.no_grad():
        out_ref, h_ref = torch_rnn(x)
        state = model.rnn.zero_state(6)
        assert state[1].shape == (0, 6, 16)  # no cell state
        for t in range(25):
            y, state = model.step(x[:, t], state, fused)
    torch.testing.assert_close(y, model.head(out_ref[:, -1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(state[0], h_ref, atol=1e-5, rtol=0)
    assert h_ref.abs().max() > 0.1


def test_classifier_serves_probabilities_and_window_model_is_bidirectional() -> None:
    spec = ModelSpec(cell="lstm", hidden_size=8, num_layers=1, task="classify", classes=("a", "b"))
    model = SequenceModel(spec).eval()
    with torch.no_grad():
        raw, _ = model.step(torch.randn(4, 1), model.rnn.zero_state(4))
        probs = model.serve(raw)
    assert probs.shape == (4, 2)
    torch.testing.assert_close(probs.sum(1), torch.ones(4))
    win = SequenceModel(
        ModelSpec(hidden_size=8, num_layers=1, task="classify", classes=spec.classes, window=5)
    )
    assert win.rnn.bidirectional and win.head.in_features == 16
    assert win.spec.state_shape == (1, 5) and win.spec.state_tensors == 1
    x = torch.randn(3, 5, 1)
    with torch.no_grad():
        flipped = win.window_logits(x)
    assert flipped.shape == (3, 2)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"task": "classify", "classes": ("a",)}, "at least two classes"),
        ({"task": "regress"}, "unknown task"),
        ({"window": 3, "window_end": "end"}, "must be a feature"),
        ({"scaling": "minmax"}, "unknown scaling"),
    ],
)
def test_bad_specs_are_refused(kwargs: dict, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=needle):
        ModelSpec(**kwargs)
