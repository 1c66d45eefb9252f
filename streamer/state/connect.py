"""Connecting to Redis as the settings say (one server or a cluster, credentials, TLS, timeouts),
and what its errors mean: an outage to wait out (:class:`StoreUnavailable`) or a setting to fix or
a bug (:class:`StateError`)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamer.errors import ConfigError, StateError, StoreUnavailable

if TYPE_CHECKING:
    from streamer.settings import Settings

__all__ = ["FAULTS", "classify_redis_error", "redis_client", "redis_client_of", "tls_refusal"]


def redis_client_of(
    url: str,
    socket_timeout_s: float,
    username: str | None = None,
    password: str | None = None,
    ssl_ca_certs: str | None = None,
    cluster: bool = False,
) -> Any:
    """A client of the Redis at ``url`` (of a Redis Cluster if ``cluster``)."""
    extra: dict[str, Any] = {}
    if username:
        extra["username"] = username
    if password:
        extra["password"] = password
    if ssl_ca_certs and url.startswith("rediss://"):
        if not Path(ssl_ca_certs).is_file():  # else every connection fails, read as an outage
            raise ConfigError(f"no CA bundle at {ssl_ca_certs}; check STREAMER_REDIS__SSL_CA_CERTS")
        extra["ssl_ca_certs"] = ssl_ca_certs
    opts = dict(
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        decode_responses=False,
        **extra,
    )
    if cluster:
        # The URL is one node; the client asks it for the others and the slot map. The client
        # rides out a blip (a failover) by itself, for well under a second; a longer outage comes
        # back to the caller, whose own loop waits, logs and counts it (redis-py's default, ten
        # retries, hid a node's restart from the worker's log and metrics).
        return RedisCluster.from_url(
            url, retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.25), 2), **opts
        )
    return aioredis.Redis.from_url(url, **opts)


def redis_client(settings: Settings) -> Any:
    """A client as the settings describe it (URL, credentials, TLS, timeouts): of one Redis, or of
    a Redis Cluster (``redis.cluster``)."""
    r = settings.redis
    return redis_client_of(
        r.url,
        r.socket_timeout_s,
        r.username,
        r.password.get_secret_value() if r.password else None,
        str(r.ssl_ca_certs) if r.ssl_ca_certs else None,
        r.cluster,
    )


#: Redis replies that mean "not now" (out of memory, a replica, loading, a failover, a cluster
#: moving slots): wait and retry. redis-py gives most their own class and strips the code from the
#: message; the others keep it as their message's first word.
_TRANSIENT_TYPES = (
    OutOfMemoryError,
    ReadOnlyError,
    BusyLoadingError,
    MasterDownError,
    TryAgainError,
    ClusterDownError,
    ClusterError,
    SlotNotCoveredError,
)
_TRANSIENT = ("BUSY", "NOREPLICAS", "OOM", "READONLY", "LOADING", "MASTERDOWN", "CLUSTERDOWN")
_UNREACHABLE = "Redis Cluster cannot be connected"
#: What a store call can raise from the client.
FAULTS = (RedisError, RedisClusterException, OSError)


def tls_refusal(exc: BaseException) -> str | None:
    """The reason, when ``exc`` (or what caused it) is a failed TLS certificate verification: a
    wrong CA bundle or host name is a setting to fix, never an outage to wait out."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur.verify_message or cur.reason or "certificate verify failed"
        cur = cur.__cause__ or cur.__context__
    return None


def classify_redis_error(exc: BaseException, what: str) -> Exception:
    """:class:`StoreUnavailable` for faults that pass; other Redis errors are bugs and propagate."""
    if isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    ):
        return StateError(
            f"redis refused the credentials ({type(exc).__name__}); check STREAMER_REDIS__*"
        )
    refused = tls_refusal(exc)
    if refused:
        return StateError(
            f"redis {what} failed: the server's TLS certificate did not verify ({refused}); "
            "check STREAMER_REDIS__SSL_CA_CERTS and the host in STREAMER_REDIS__URL"
        )
    if isinstance(exc, AskError | ClusterCrossSlotError):  # (MovedError is an AskError)
        return StateError(
            f"redis {what} failed: {type(exc).__name__}: {exc}: this Redis is a cluster; "
            "set STREAMER_REDIS__CLUSTER=1"
        )
    if isinstance(exc, RedisClusterException) and "not enabled" in str(exc):
        return StateError(
            f"redis {what} failed: {exc}: STREAMER_REDIS__CLUSTER is set, but this Redis is no "
            "cluster node"
        )
    transient = (
        isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError, *_TRANSIENT_TYPES))
        or (isinstance(exc, ResponseError) and str(exc).startswith(_TRANSIENT))
        # no node of the cluster answers (not: a node that is no cluster, a cross-slot call)
        or (isinstance(exc, RedisClusterException) and str(exc).startswith(_UNREACHABLE))
    )
    if transient:
        return StoreUnavailable(f"redis {what} failed: {type(exc).__name__}: {exc}")
    return StateError(f"redis {what} failed: {type(exc).__name__}: {exc}")
