"""One settings class, built once at the edge (CLI, worker) and passed down.

Every field can be set from the environment with the prefix ``STREAMER_``; nested groups use a double
underscore: ``STREAMER_BATCH__MAX_SIZE=512``, ``STREAMER_KAFKA__BOOTSTRAP_SERVERS=host:9092``.
Library code never reads the environment; it takes a :class:`Settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["BatchSettings", "KafkaSettings", "RedisSettings", "Settings", "TopicSettings"]


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Group):
    bootstrap_servers: str = "127.0.0.1:9092"
    #: Faust/Kafka consumer session timeout; a few seconds lets a restarted worker rejoin fast.
    session_timeout_s: float = 10.0
    #: Where a new consumer group starts: from the beginning of the topic, so no event is missed.
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    #: How long the producer waits to fill a batch of output messages.
    producer_linger_ms: int = 5

    @property
    def broker_url(self) -> str:
        return ",".join(f"kafka://{h.strip()}" for h in self.bootstrap_servers.split(","))


class RedisSettings(_Group):
    url: str = "redis://127.0.0.1:6379/0"
    #: Seconds for one Redis command before it counts as a failure (and is retried).
    socket_timeout_s: float = 5.0


class TopicSettings(_Group):
    events: str = "events"
    predictions: str = "predictions"
    dead_letter: str = "events.dlq"
    #: Partitions for the topics streamer creates; the unit of parallelism across workers.
    partitions: int = Field(default=4, ge=1)
    #: Largest event accepted, in bytes; larger ones are dead-lettered.
    max_event_bytes: int = Field(default=64 * 1024, ge=256)


class BatchSettings(_Group):
    max_size: int = Field(default=256, ge=1)
    max_wait_s: float = Field(default=0.05, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMER_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    #: Faust application id: the Kafka consumer group of the workers.
    app_id: str = "streamer"
    #: Name of the model in state keys: ``streamer:{model_name}:{entity}``.
    model_name: str = "default"
    #: Directory of a model artifact (``streamer train`` writes one).
    model_path: Path | None = None
    #: ``auto`` picks CUDA when present, else CPU; or ``cpu``, ``cuda``, ``cuda:N``.
    device: str = "auto"
    #: Storage dtype of h and c in Redis.
    state_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    #: Expiry of an entity's state after its last update; 0 keeps states forever.
    state_ttl_s: int = Field(default=30 * 24 * 3600, ge=0)
    #: Torch intra-op threads for the cell; 1 leaves the other core to Kafka and Redis clients.
    torch_threads: int = Field(default=1, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Where Faust keeps its per-app data directory.
    worker_dir: Path = Path.home() / ".cache" / "streamer" / "workers"

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicSettings = TopicSettings()
    batch: BatchSettings = BatchSettings()

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        v = v.strip().lower()
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {v!r}")


def to_env(settings: Settings) -> dict[str, str]:
    """The ``STREAMER_*`` environment that rebuilds ``settings`` in another process.

    >>> to_env(Settings(app_id="a"))["STREAMER_BATCH__MAX_SIZE"]
    '256'
    """
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if isinstance(value, dict):
            for sub, v in value.items():
                env[f"STREAMER_{name.upper()}__{sub.upper()}"] = str(v)
        elif value is not None:
            env[f"STREAMER_{name.upper()}"] = str(value)
    return env
