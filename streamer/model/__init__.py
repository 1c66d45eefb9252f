"""Models: their description (:mod:`~streamer.model.spec`), the recurrent networks and their
heads (:mod:`~streamer.model.recurrent`, torch only), artifacts on disk
(:mod:`~streamer.model.artifact`) and the registry in Redis (:mod:`~streamer.model.registry`)."""

from __future__ import annotations

from streamer.model.recurrent import (
    CELLS,
    ModelSpec,
    Scaling,
    SequenceModel,
    StackedGRU,
    StackedLSTM,
    StackedRNN,
    State,
    Task,
    recurrent,
)

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
