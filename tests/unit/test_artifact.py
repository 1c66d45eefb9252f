from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from streamer.errors import ArtifactError
from streamer.model.artifact import load_artifact, save_artifact
from tests.conftest import make_model


def test_round_trip_keeps_weights_and_version(tmp_path: Path) -> None:
    model = make_model(features=("a",))
    version = save_artifact(model, tmp_path, {"rows": 5})
    art = load_artifact(tmp_path)
    assert art.version == version and art.training == {"rows": 5}
    assert art.spec == model.spec
    for k, v in model.state_dict().items():
        torch.testing.assert_close(art.model.state_dict()[k], v, atol=0, rtol=0)
    # the LSTM part loads into a plain torch.nn.LSTM unchanged
    lstm = torch.nn.LSTM(2, 16, 2, batch_first=True)
    lstm.load_state_dict(
        {k.removeprefix("rnn."): v for k, v in model.state_dict().items() if k.startswith("rnn.")}
    )


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    save_artifact(make_model(), tmp_path)
    spec = json.loads((tmp_path / "spec.json").read_text())
    spec["spec"]["hidden_size"] = 99
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match="do not match"):
        load_artifact(tmp_path)


def test_missing_artifact_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="is not a model artifact"):
        load_artifact(tmp_path / "nope")
