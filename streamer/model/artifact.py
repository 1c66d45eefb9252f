"""Model artifacts: a directory with the weights (safetensors) and a JSON spec.

    model/
      model.safetensors   the SequenceModel's state_dict (its core's part is nn.LSTM's, nn.GRU's
                          or nn.RNN's, unchanged)
      spec.json           {"format": 1, "version": ..., "spec": {...}, "training": {...}}

The version is a content hash of the weights and the spec: the same model always has the same
version, and a state records the version that wrote it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load, save

from streamer.errors import ArtifactError, ConfigError
from streamer.model import ModelSpec, SequenceModel

__all__ = ["Artifact", "artifact_from_bytes", "load_artifact", "read_span", "save_artifact"]

WEIGHTS = "model.safetensors"
SPEC = "spec.json"
#: What the model was trained on, per entity (``streamer.train.checks.training_span``): read by
#: ``streamer evaluate`` only; the registry keeps the weights and the spec.
SPAN = "training-span.parquet"
FORMAT = 1


@dataclass(frozen=True)
class Artifact:
    model: SequenceModel
    spec: ModelSpec
    version: str
    training: dict[str, Any]


def _version(weights: bytes, spec: dict[str, Any]) -> str:
    h = hashlib.sha256(weights)
    h.update(json.dumps(spec, sort_keys=True).encode())
    return h.hexdigest()[:12]


def _weights(model: SequenceModel) -> bytes:
    """The weights as the artifact's safetensors file holds them."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return save(tensors)


def model_version(model: SequenceModel) -> str:
    """The version :func:`save_artifact` gives the model (a hash of its weights and spec)."""
    return _version(_weights(model), model.spec.to_dict())


def save_artifact(
    model: SequenceModel,
    out: Path,
    training: dict[str, Any] | None = None,
    span: pd.DataFrame | None = None,
) -> str:
    """Write the artifact into ``out`` (created if needed) and return its version; ``span``:
    what it was trained on, per entity (an older span file there is removed without one)."""
    out.mkdir(parents=True, exist_ok=True)
    if span is not None:
        span.to_parquet(out / SPAN, index=False)
    else:
        (out / SPAN).unlink(missing_ok=True)
    weights = _weights(model)
    (out / WEIGHTS).write_bytes(weights)
    spec = model.spec.to_dict()
    version = _version(weights, spec)
    doc = {"format": FORMAT, "version": version, "spec": spec, "training": training or {}}
    (out / SPEC).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return version


def read_span(path: Path) -> pd.DataFrame | None:
    """The artifact's training span (:data:`SPAN`), or None if it has none."""
    f = path / SPAN
    return pd.read_parquet(f) if f.is_file() else None


def load_artifact(path: Path, device: torch.device | str = "cpu") -> Artifact:
    """Load an artifact directory; :class:`ArtifactError` with the reason if it cannot be used."""
    spec_path, weights_path = path / SPEC, path / WEIGHTS
    if not spec_path.is_file() or not weights_path.is_file():
        raise ArtifactError(f"{path} is not a model artifact (needs {SPEC} and {WEIGHTS})")
    return artifact_from_bytes(spec_path.read_bytes(), weights_path.read_bytes(), device, str(path))


def artifact_from_bytes(
    spec_json: bytes, weights: bytes, device: torch.device | str = "cpu", where: str = "artifact"
) -> Artifact:
    """An artifact from the contents of its two files (the registry keeps them in Redis)."""
    try:
        doc = json.loads(spec_json)
        spec = ModelSpec.from_dict(doc["spec"])
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        raise ArtifactError(f"{where}: unreadable spec ({exc})") from exc
    if doc.get("format") != FORMAT:
        raise ArtifactError(f"{where}: artifact format {doc.get('format')} is not {FORMAT}")
    version = _version(weights, doc["spec"])
    if version != doc.get("version"):
        raise ArtifactError(
            f"{where}: weights do not match the spec's version {doc.get('version')}"
        )
    try:
        model = SequenceModel(spec)
        model.load_state_dict(load(weights))
    except (ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{where}: weights do not fit the spec ({exc})") from exc
    model.eval().to(device)
    return Artifact(model, spec, version, dict(doc.get("training", {})))
