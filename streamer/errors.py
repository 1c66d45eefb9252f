"""Errors raised by streamer.

    StreamerError                 root: catch this to catch everything streamer raises on purpose
    ├── ConfigError               settings or arguments that cannot work (bad device, missing model)
    ├── ArtifactError             a model artifact that is missing, corrupt or inconsistent
    ├── DataError                 an input file that is not in the long format
    └── StateError                state problems
        ├── StateCodecError       bytes in Redis that are not a state record this version can read
        ├── StoreUnavailable      Redis cannot be reached; callers wait and retry, never drop
        └── StaleBatch            a batch stepped from a write Redis then refused; step it again

Bad events are not errors: they are data (see :class:`streamer.schemas.DeadLetter`).
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "StaleBatch",
    "StateCodecError",
    "StateError",
    "StoreUnavailable",
    "StreamerError",
    "TrainingFailed",
]


class StreamerError(Exception):
    """Root of every error streamer raises on purpose."""


class ConfigError(StreamerError):
    """Settings or arguments that cannot work."""


class ArtifactError(StreamerError):
    """A model artifact that is missing, corrupt or inconsistent."""


class DataError(StreamerError):
    """An input file that is not in the long format ``unique_id, ds, y[, features...]``."""


class TrainingFailed(StreamerError):
    """Training ended with a model that learnt nothing useful."""


class StateError(StreamerError):
    """Base of the state errors."""


class StateCodecError(StateError):
    """Bytes that are not a state record this version can decode."""


class StoreUnavailable(StateError):
    """The state store cannot be reached right now. Retry; never drop the batch."""


class StaleBatch(StateError):
    """A prepared batch read a state from a write the store then refused: prepare it again."""
