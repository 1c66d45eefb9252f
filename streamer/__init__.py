"""streamer: online LSTM sequence prediction on Kafka streams, with per-entity state in Redis.

The public surface is named in ``__all__``; names load lazily, so ``import streamer`` (and the CLI's
argument errors) stay fast and torch is imported only by code that needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Settings": "streamer.settings",
    "Event": "streamer.schemas",
    "Prediction": "streamer.schemas",
    "DeadLetter": "streamer.schemas",
    "decode_event": "streamer.schemas",
    "SequenceModel": "streamer.model",
    "ModelSpec": "streamer.model",
    "StackedLSTM": "streamer.model",
    "StateRecord": "streamer.state",
    "StateStore": "streamer.state",
    "RedisStateStore": "streamer.state",
    "Predictor": "streamer.serve.predictor",
    "BatchHandler": "streamer.serve.pipeline",
    "load_artifact": "streamer.model.artifact",
    "save_artifact": "streamer.model.artifact",
    "StreamerError": "streamer.errors",
}

__all__ = [
    "BatchHandler",
    "DeadLetter",
    "Event",
    "ModelSpec",
    "Prediction",
    "Predictor",
    "RedisStateStore",
    "SequenceModel",
    "Settings",
    "StackedLSTM",
    "StateRecord",
    "StateStore",
    "StreamerError",
    "__version__",
    "decode_event",
    "load_artifact",
    "save_artifact",
]
assert set(__all__) == {"__version__", *_EXPORTS}

if TYPE_CHECKING:
    from streamer.errors import StreamerError
    from streamer.model import ModelSpec, SequenceModel, StackedLSTM
    from streamer.model.artifact import load_artifact, save_artifact
    from streamer.schemas import DeadLetter, Event, Prediction, decode_event
    from streamer.serve.pipeline import BatchHandler
    from streamer.serve.predictor import Predictor
    from streamer.settings import Settings
    from streamer.state import RedisStateStore, StateStore
    from streamer.state.codec import StateRecord


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'streamer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
