"""One settings class, built once at the edge (CLI, worker) and passed down.

A setting comes from, highest first: a command-line flag, an environment variable, the configuration
file, its default. Environment variables take the prefix ``STREAMER_``, nested groups a double
underscore: ``STREAMER_BATCH__MAX_SIZE=512``, ``STREAMER_KAFKA__BOOTSTRAP_SERVERS=host:9092``. The
file is TOML with the same names (``model_name = "m"``, ``[kafka]`` then ``bootstrap_servers =
"host:9092"``): ``--config FILE``, else ``$STREAMER_CONFIG``, else ``streamer.toml`` in the working
directory if there is one (:meth:`Settings.load`). A key of the file or a ``STREAMER_*`` variable
that names no setting is an error that says which setting was probably meant.
Library code never reads the environment or files; it takes a :class:`Settings`.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from streamer.config import (
    CheckedEnv,
    FileSource,
    config_path,
    file_values,
    read_config,
)
from streamer.errors import ConfigError

__all__ = [
    "BatchSettings",
    "KafkaSettings",
    "MetricsSettings",
    "RedisSettings",
    "Settings",
    "TopicSettings",
]


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Group):
    #: Comma-separated ``host:port`` of one or more brokers.
    bootstrap_servers: str = "127.0.0.1:9092"
    #: The worker's Kafka client: ``aiokafka`` (asyncio; the faster worker here), or
    #: ``confluent`` (experimental: confluent-kafka on librdkafka, a consume thread feeding the
    #: loop, cooperative rebalancing, and transactions fenced by the consumer group's generation,
    #: KIP-447). The tools (replay, tail, doctor) use aiokafka.
    client: Literal["aiokafka", "confluent"] = "aiokafka"
    #: Consumer session timeout: how long a worker that died (kill -9, a lost host) keeps its
    #: partitions before the group gives them to the others. Unset: the shortest the broker
    #: allows (its ``group.min.session.timeout.ms``), but at least 3 s; 10 s if the broker's
    #: configuration cannot be read. Heartbeats go every sixth of it, at most every 0.5 s.
    session_timeout_s: float | None = Field(default=None, gt=0)
    #: Where a new consumer group starts: from the beginning of the topic, so no event is missed.
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    #: How long the producer waits to fill a batch of output messages (aiokafka; the confluent
    #: client hands a batch's outputs over at once and does not linger).
    producer_linger_ms: int = 5
    #: Exactly-once mode: this worker's transactional id (prefixed with the app id). Keep it stable
    #: across restarts of the same worker, distinct between workers: a restarted worker then fences
    #: its dead predecessor's open transaction at once instead of waiting for it to time out.
    transactional_id: str = Field(default_factory=socket.gethostname)
    #: ``PLAINTEXT``, ``SSL`` (TLS), ``SASL_PLAINTEXT`` or ``SASL_SSL``.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    #: SASL mechanism (unset: ``PLAIN``): ``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``.
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    #: SASL user name.
    sasl_username: str | None = None
    #: SASL password (a secret: it never reaches a log line).
    sasl_password: SecretStr | None = None
    #: CA bundle that verifies the brokers (SSL and SASL_SSL).
    ssl_cafile: Path | None = None
    #: Client certificate for mutual TLS.
    ssl_certfile: Path | None = None
    #: Client certificate's private key.
    ssl_keyfile: Path | None = None

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_servers(cls, v: str) -> str:
        for server in v.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"expected host:port[,host:port...], got {v!r} (e.g. 127.0.0.1:9092)"
                )
        return v

    def librdkafka_config(self) -> dict[str, Any]:
        """The same connection and security settings as a librdkafka (confluent-kafka) config."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol.lower(),
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            for key, path in (
                ("ssl.ca.location", self.ssl_cafile),
                ("ssl.certificate.location", self.ssl_certfile),
                ("ssl.key.location", self.ssl_keyfile),
            ):
                if path is not None:
                    conf[key] = str(path)
        if self.security_protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.sasl_mechanism or "PLAIN"
            conf["sasl.username"] = self.sasl_username or ""
            conf["sasl.password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else ""
            )
        return conf

    def client_options(self) -> dict[str, Any]:
        """Security keyword arguments for aiokafka clients."""
        opts: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            try:
                ctx = ssl.create_default_context(
                    cafile=str(self.ssl_cafile) if self.ssl_cafile else None
                )
                if self.ssl_certfile:
                    ctx.load_cert_chain(
                        str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None
                    )
            except (OSError, ssl.SSLError) as exc:  # a file that is no PEM, a key of another cert
                raise ConfigError(
                    f"cannot use the Kafka TLS files ({exc}); check STREAMER_KAFKA__SSL_CAFILE, "
                    "STREAMER_KAFKA__SSL_CERTFILE and STREAMER_KAFKA__SSL_KEYFILE"
                ) from None
            opts["ssl_context"] = ctx
        if self.security_protocol.startswith("SASL"):
            opts["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return opts


class RedisSettings(_Group):
    #: ``redis://`` or ``rediss://`` (TLS). Put credentials in ``username``/``password``, not here.
    url: str = "redis://127.0.0.1:6379/0"
    #: ACL user (Redis 6+); leave unset for the default user.
    username: str | None = None
    #: Password (a secret: it never reaches a log line).
    password: SecretStr | None = None
    #: CA bundle to verify a ``rediss://`` server.
    ssl_ca_certs: Path | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"expected redis://host:port[/db], rediss:// (TLS) or unix://, got {v!r} "
                "(e.g. redis://127.0.0.1:6379/0)"
            )
        return v

    #: Seconds for one Redis command before it counts as a failure (and is retried).
    socket_timeout_s: float = 5.0
    #: The URL names one node of a Redis Cluster (any node: the others are discovered). States are
    #: read and written per node, a batch split by hash slot.
    cluster: bool = False


class TopicSettings(_Group):
    #: The events the workers consume.
    events: str = "events"
    #: Per-event predictions.
    predictions: str = "predictions"
    #: Window models' predictions (one per closed window); unset: ``{predictions}.windows``.
    windows: str = ""
    #: Events that could not be used, with the reason; unset: ``{events}.dlq``.
    dead_letter: str = ""
    #: Partitions for the topics streamer creates; the unit of parallelism across workers.
    partitions: int = Field(default=4, ge=1)
    #: Largest event accepted, in bytes; larger ones are dead-lettered.
    max_event_bytes: int = Field(default=64 * 1024, ge=256)
    #: Dead letters keep the original bytes up to this size (the broker refuses larger messages).
    max_dead_letter_bytes: int = Field(default=512 * 1024, ge=1024)

    @model_validator(mode="before")
    @classmethod
    def _derived_names(cls, data: Any) -> Any:
        """The dead letters and window predictions follow renamed events and predictions topics
        unless they are named themselves."""
        if isinstance(data, dict):
            data = dict(data)
            if not data.get("dead_letter"):
                data["dead_letter"] = f"{data.get('events') or 'events'}.dlq"
            if not data.get("windows"):
                data["windows"] = f"{data.get('predictions') or 'predictions'}.windows"
        return data


class BatchSettings(_Group):
    #: Most events per batch. Large batches amortise the per-batch round trips under load; at low
    #: rates batches are as large as what arrived while the last one was processed.
    max_size: int = Field(default=1024, ge=1)
    #: How long a batch waits for more events once it has some. 0: a batch is what has arrived
    #: (under load, what came while the batch before it was stepped), and an event at a low rate
    #: goes on at once; more makes larger batches at moderate rates, at that cost in latency.
    max_wait_s: float = Field(default=0.0, ge=0)
    #: Most batches saved or delivered in the background while the next one is stepped (the
    #: order of saves, deliveries and commits holds whatever the number; more overlap the
    #: round trips to Redis and Kafka, at the cost of memory and latency under load).
    max_behind: int = Field(default=2, ge=1, le=16)


class MetricsSettings(_Group):
    #: Serve Prometheus metrics at ``http://HOST:PORT/metrics`` from every worker.
    enabled: bool = True
    #: The address the metrics endpoint listens on.
    host: str = "0.0.0.0"
    #: 0 picks a free port (several workers on one host); the worker logs it and announces it in
    #: Redis, where ``streamer dashboard`` and ``streamer doctor`` find it.
    port: int = Field(default=9108, ge=0, le=65535)
    #: The host name or address others reach the endpoint at (announced in Redis); default: the
    #: address this host's name resolves to (a pod's IP in Kubernetes).
    advertise_host: str | None = None
    #: How often a worker announces itself in Redis (``streamer-workers:{app_id}``), in seconds.
    announce_s: float = Field(default=5.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMER_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, CheckedEnv(settings_cls), FileSource(settings_cls))

    @classmethod
    def load(
        cls, config: Path | str | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Settings from ``overrides`` (e.g. command-line flags; groups as nested mappings), the
        environment, and a configuration file: ``config``, else ``$STREAMER_CONFIG``, else
        ``streamer.toml`` in the working directory if there is one. Relative paths in the file
        are relative to the file.

        >>> Settings.load(overrides={"kafka": {"bootstrap_servers": "k:9092"}}).kafka.client
        'aiokafka'
        """
        path = config_path(config)
        with file_values(read_config(path, cls) if path is not None else {}):
            return cls(**dict(overrides or {}))

    #: The workers' Kafka consumer group (and the name they announce themselves under).
    app_id: str = "streamer"
    #: Name of the model in state keys: ``streamer:{model_name}:{entity}``.
    model_name: str = "default"
    #: Directory of a model artifact (``streamer train`` writes one). Workers serve it until a
    #: version of ``model_name`` is active in the registry (``streamer model activate``).
    model_path: Path | None = None
    #: How often workers look for a newly activated model version, in seconds; 0: never (the
    #: worker serves the model it started with).
    registry_poll_s: float = Field(default=1.0, ge=0)
    #: A stored state written by another model version of the same shape (cell, layers, hidden
    #: size) is ``keep``-t and continues under the new model, or ``reset`` to zeros. States of
    #: another shape are always reset. Either way the fence and the kept predictions stay.
    on_model_change: Literal["keep", "reset"] = "keep"
    #: An event from another partition than its entity's state (producers that hash keys
    #: differently: librdkafka and kcat default to CRC32, Java clients and streamer to murmur2)
    #: is dead-lettered (``partition_conflict``) under ``refuse``; ``takeover`` moves the
    #: entity to the event's partition (its offsets start again), as needed after recreating or
    #: repartitioning the events topic.
    on_partition_change: Literal["refuse", "takeover"] = "refuse"
    #: ``auto`` picks CUDA when present, else CPU; or ``cpu``, ``cuda``, ``cuda:N``.
    device: str = "auto"
    #: Storage dtype of h and c in Redis.
    state_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    #: Expiry of an entity's state after its last update; 0 keeps states forever.
    state_ttl_s: int = Field(default=30 * 24 * 3600, ge=0)
    #: Torch intra-op threads for the cell; 1 leaves the other core to Kafka and Redis clients.
    torch_threads: int = Field(default=1, ge=1)
    #: glibc: keep up to this many MiB of freed memory mapped, and serve blocks under 32 MiB
    #: from the heap, so a batch's tensors reuse the last batch's pages instead of faulting in
    #: fresh ones (:mod:`streamer.serve.allocator`); 0: the C library's defaults.
    retain_memory_mb: int = Field(default=256, ge=0)
    #: Waves of at least this many events run the fused sequence kernel instead of one cell call
    #: per layer; 0 never. Unset: from 256 on CPU, never on a GPU (measured faster each way:
    #: streamer.serve.step.Stepper, bench/gpu_check.py).
    fused_cell_from: int | None = Field(default=None, ge=0)
    #: Keep the states of recently seen entities of the owned partitions in memory, up to this
    #: many MiB (least recently used out first); 0 turns the cache off. Writes still go to Redis
    #: every batch; the entries of a revoked partition are dropped.
    cache_max_mb: float = Field(default=256.0, ge=0)
    #: ``at_least_once``: every event gets a prediction, a crash may repeat some (same values and
    #: identity). ``exactly_once``: outputs and offsets commit in one Kafka transaction, so a
    #: ``read_committed`` consumer sees exactly one prediction per event.
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    #: How the worker consumes the events: ``streamer`` (its own batch loop: the fastest, and the
    #: only one with exactly once) or ``faust`` (a Faust app and agent, ``streamer.faust``; at
    #: least once, aiokafka).
    engine: Literal["streamer", "faust"] = "streamer"
    #: Most predictions kept per entity state for re-emission after a crash.
    max_kept_outputs: int = Field(default=1024, ge=1)
    #: The worker's log level (``streamer worker -l`` overrides it).
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicSettings = TopicSettings()
    batch: BatchSettings = BatchSettings()
    metrics: MetricsSettings = MetricsSettings()

    @model_validator(mode="after")
    def _check_kept_outputs(self) -> Settings:
        if self.max_kept_outputs < self.batch.max_size:
            raise ValueError(
                f"max_kept_outputs ({self.max_kept_outputs}) must be at least batch.max_size "
                f"({self.batch.max_size}): a batch's outputs must all be kept until committed"
            )
        return self

    @model_validator(mode="after")
    def _check_engine(self) -> Settings:
        if self.engine != "faust":
            return self
        if self.processing_guarantee == "exactly_once":
            raise ValueError(
                "the faust engine is at least once (Faust's transactions go per source partition; "
                "a batch spans many): use engine streamer for exactly_once"
            )
        if self.kafka.client != "aiokafka":
            raise ValueError("the faust engine runs on aiokafka: unset kafka.client")
        return self

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
    '1024'
    """

    def text(v: object) -> str:
        return v.get_secret_value() if isinstance(v, SecretStr) else str(v)

    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if v is not None:
                    env[f"STREAMER_{name.upper()}__{sub.upper()}"] = text(v)
        elif value is not None:
            env[f"STREAMER_{name.upper()}"] = text(value)
    return env
