"""Per-entity state: the binary record, its one codec, and the store that keeps it in Redis.

One Redis value per (model name, entity), under the readable key ``streamer:{model}:{entity}``::

    offset  size  field
    0       4     magic b"STRM"
    4       1     format version (1)
    5       1     dtype of h and c: 0 float32, 1 float16, 2 bfloat16
    6       2     layers L
    8       4     hidden size H
    12      16    model version (ASCII, NUL padded)
    28      8     step count: events applied to this entity
    36      4     source partition of the last applied event   } the fence; these two fields keep
    40      8     source offset of the last applied event      } their place in every format version
    48      8     last update, Unix milliseconds
    56      8     scaling: count   (float64 fields: running statistics of y,
    64      8     scaling: mean     see streamer.scaling)
    72      8     scaling: var
    80      ...   h (L*H values of dtype), then c (L*H values)
    then    4     n: outputs kept for re-emission (format 2)
            2     K: values per output (the horizon)
            8n    their source offsets (int64)
            8n    their step counts (uint64)
            8nK   their forecasts (float64)

The kept outputs are the predictions of events this state already applied whose offsets may not be
committed yet: after a crash those events are consumed again, skipped by the fence, and their
predictions re-emitted from here, identical to the first time. Format 1 records (no outputs) are
still read.

Little-endian throughout. :func:`encode` and :func:`decode` are the only code that touches the bytes;
the Lua script of :class:`RedisStateStore` reads the fence fields at their fixed offsets.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamer.errors import StateCodecError, StateError, StoreUnavailable

if TYPE_CHECKING:
    from streamer.settings import Settings

__all__ = [
    "HEADER",
    "RedisStateStore",
    "StateRecord",
    "StateStore",
    "decode",
    "encode",
    "read_fence",
    "state_key",
]

MAGIC = b"STRM"
FORMAT_VERSION = 2
_READABLE_FORMATS = (1, 2)
_TAIL = struct.Struct("<IH")
HEADER = struct.Struct("<4sBBHI16sQiqQddd")
assert HEADER.size == 80

Dtype = Literal["float32", "float16", "bfloat16"]
_DTYPE_CODES: dict[str, int] = {"float32": 0, "float16": 1, "bfloat16": 2}
_DTYPE_NAMES: dict[int, Dtype] = {0: "float32", 1: "float16", 2: "bfloat16"}
_DTYPE_BYTES = {0: 4, 1: 2, 2: 2}

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class StateRecord:
    """The decoded state of one entity. h and c are float32 arrays of shape ``(L, H)``."""

    h: F32
    c: F32
    model_version: str
    step: int
    partition: int
    offset: int
    updated_ms: int
    count: float
    mean: float
    var: float
    dtype: Dtype = "float32"
    #: Outputs kept for re-emission: source offsets ``(n,)``, steps ``(n,)``, forecasts ``(n, K)``.
    out_offsets: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    out_steps: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    out_forecasts: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def layers(self) -> int:
        return int(self.h.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.h.shape[1])


def state_key(model: str, entity: str) -> str:
    """The Redis key of an entity's state.

    >>> state_key("retail", "store-7")
    'streamer:retail:store-7'
    """
    return f"streamer:{model}:{entity}"


def _to_bytes(a: F32, dtype: int) -> bytes:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == 0:
        return a.astype("<f4").tobytes()
    if dtype == 1:
        return a.astype("<f2").tobytes()
    # bfloat16: the upper half of float32, rounded to nearest even.
    u = a.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def _from_bytes(buf: bytes, offset: int, n: int, dtype: int) -> F32:
    if dtype == 0:
        return np.frombuffer(buf, "<f4", n, offset).astype(np.float32)
    if dtype == 1:
        return np.frombuffer(buf, "<f2", n, offset).astype(np.float32)
    bits = np.frombuffer(buf, "<u2", n, offset).astype(np.uint32) << 16
    return bits.view(np.float32)


def encode(rec: StateRecord) -> bytes:
    """The bytes of a state record."""
    code = _DTYPE_CODES[rec.dtype]
    layers, hidden = rec.h.shape
    version = rec.model_version.encode("ascii")
    if len(version) > 16:
        raise StateCodecError(f"model version {rec.model_version!r} is longer than 16 bytes")
    head = HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        code,
        layers,
        hidden,
        version,
        rec.step,
        rec.partition,
        rec.offset,
        rec.updated_ms,
        rec.count,
        rec.mean,
        rec.var,
    )
    n = len(rec.out_offsets)
    k = rec.out_forecasts.shape[1] if n else 0
    tail = (
        _TAIL.pack(n, k)
        + np.asarray(rec.out_offsets, "<i8").tobytes()
        + np.asarray(rec.out_steps, "<u8").tobytes()
        + np.asarray(rec.out_forecasts, "<f8").reshape(n, k).tobytes()
    )
    return head + _to_bytes(rec.h, code) + _to_bytes(rec.c, code) + tail


def decode(buf: bytes) -> StateRecord:
    """A state record from its bytes; :class:`StateCodecError` if they are not one."""
    if len(buf) < HEADER.size:
        raise StateCodecError(f"state record of {len(buf)} bytes is shorter than its header")
    (
        magic,
        fmt,
        code,
        layers,
        hidden,
        version,
        step,
        partition,
        offset,
        updated,
        count,
        mean,
        var,
    ) = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise StateCodecError(f"not a streamer state record (magic {magic!r})")
    if fmt not in _READABLE_FORMATS:
        raise StateCodecError(
            f"state format version {fmt} is not supported (this reads {FORMAT_VERSION})"
        )
    if code not in _DTYPE_NAMES:
        raise StateCodecError(f"unknown state dtype code {code}")
    n = layers * hidden
    body_end = HEADER.size + 2 * n * _DTYPE_BYTES[code]
    out_offsets = np.zeros(0, np.int64)
    out_steps = np.zeros(0, np.int64)
    out_forecasts = np.zeros((0, 0))
    if fmt == 1:
        expected = body_end
    elif len(buf) < body_end + _TAIL.size:
        expected = body_end + _TAIL.size
    else:
        n_out, k = _TAIL.unpack_from(buf, body_end)
        at = body_end + _TAIL.size
        expected = at + n_out * (16 + 8 * k)
        if len(buf) == expected:
            out_offsets = np.frombuffer(buf, "<i8", n_out, at).astype(np.int64)
            out_steps = np.frombuffer(buf, "<u8", n_out, at + 8 * n_out).astype(np.int64)
            out_forecasts = (
                np.frombuffer(buf, "<f8", n_out * k, at + 16 * n_out)
                .astype(np.float64)
                .reshape(n_out, k)
            )
    if len(buf) != expected:
        raise StateCodecError(f"state record is {len(buf)} bytes, its header says {expected}")
    h = _from_bytes(buf, HEADER.size, n, code).reshape(layers, hidden)
    c = _from_bytes(buf, HEADER.size + n * _DTYPE_BYTES[code], n, code).reshape(layers, hidden)
    return StateRecord(
        h=h,
        c=c,
        model_version=version.rstrip(b"\0").decode("ascii", errors="replace"),
        step=step,
        partition=partition,
        offset=offset,
        updated_ms=updated,
        count=count,
        mean=mean,
        var=var,
        dtype=_DTYPE_NAMES[code],
        out_offsets=out_offsets,
        out_steps=out_steps,
        out_forecasts=out_forecasts,
    )


def read_fence(buf: bytes) -> tuple[int, int] | None:
    """``(partition, offset)`` of a record's fence, read as the Lua script reads it: also from a
    record whose body cannot be decoded, so the predictor and the store agree on what was applied.
    """
    if len(buf) < 48 or buf[:4] != MAGIC:
        return None
    partition, offset = struct.unpack_from("<iq", buf, 36)
    return int(partition), int(offset)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class StateStore(Protocol):
    """Where states live. Each call is one round trip, whatever the number of entities."""

    async def get_many(self, entities: Sequence[str]) -> list[bytes | None]:
        """The encoded records of the entities, ``None`` where an entity has none."""
        ...

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Save records unless the stored one is as new or newer; True where saved."""
        ...

    async def aclose(self) -> None: ...


# Compare-and-set on the fence (partition, offset) at bytes 36..47 of the header, for many keys in one
# call. A record is written when there is no valid record yet, when the stored one came from another
# partition (the topic was recreated or repartitioned: the new source wins), or when the stored
# offset is lower. Otherwise the write is refused: a replay or a zombie worker cannot roll back state.
# A refused write whose bytes are already stored counts as saved: retrying a write whose reply was
# lost (a timeout after Redis applied it) succeeds instead of dropping the batch's predictions.
_PUT_MANY_LUA = """
local ttl = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local new = ARGV[i + 1]
  local cur = redis.call('GETRANGE', key, 0, 47)
  local result = 1
  if #cur == 48 and string.sub(cur, 1, 4) == 'STRM' then
    local cp, co = struct.unpack('<i4i8', string.sub(cur, 37, 48))
    local np, no = struct.unpack('<i4i8', string.sub(new, 37, 48))
    if cp == np and co >= no then
      result = 0
      if co == no and redis.call('GET', key) == new then result = 2 end
    end
  end
  if result == 1 then
    if ttl > 0 then
      redis.call('SET', key, new, 'PX', ttl)
    else
      redis.call('SET', key, new)
    end
  end
  out[i] = result
end
return out
"""


#: Redis replies that mean "not now" (out of memory, a replica, loading, a failover): wait and retry.
_TRANSIENT = (
    "OOM",
    "READONLY",
    "BUSY",
    "LOADING",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
)


def _classify(exc: BaseException, what: str) -> Exception:
    """:class:`StoreUnavailable` for faults that pass; other Redis errors are bugs and propagate."""
    if isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    ):
        return StateError(
            f"redis refused the credentials ({type(exc).__name__}); check STREAMER_REDIS__*"
        )
    transient = isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(_TRANSIENT)
    )
    if transient:
        return StoreUnavailable(f"redis {what} failed: {type(exc).__name__}: {exc}")
    return StateError(f"redis {what} failed: {type(exc).__name__}: {exc}")


class RedisStateStore:
    """States in Redis: MGET to read, one Lua compare-and-set to write, a TTL per key."""

    def __init__(self, client: aioredis.Redis, model: str, ttl_s: int = 0):
        self._redis = client
        self._model = model
        self._ttl_ms = ttl_s * 1000
        self._put_script = client.register_script(_PUT_MANY_LUA)

    @classmethod
    def from_url(
        cls,
        url: str,
        model: str,
        ttl_s: int = 0,
        socket_timeout_s: float = 5.0,
        *,
        username: str | None = None,
        password: str | None = None,
        ssl_ca_certs: str | None = None,
    ) -> RedisStateStore:
        extra: dict[str, Any] = {}
        if username:
            extra["username"] = username
        if password:
            extra["password"] = password
        if ssl_ca_certs and url.startswith("rediss://"):
            extra["ssl_ca_certs"] = ssl_ca_certs
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            decode_responses=False,
            **extra,
        )
        return cls(client, model, ttl_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStateStore:
        r = settings.redis
        return cls.from_url(
            r.url,
            settings.model_name,
            settings.state_ttl_s,
            r.socket_timeout_s,
            username=r.username,
            password=r.password.get_secret_value() if r.password else None,
            ssl_ca_certs=str(r.ssl_ca_certs) if r.ssl_ca_certs else None,
        )

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    def key(self, entity: str) -> str:
        return state_key(self._model, entity)

    async def get_many(self, entities: Sequence[str]) -> list[bytes | None]:
        if not entities:
            return []
        try:
            values = cast(
                list[bytes | None], await self._redis.mget([self.key(e) for e in entities])
            )
        except (RedisError, OSError) as exc:
            raise _classify(exc, "read") from exc
        return values

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        if not items:
            return []
        keys = [self.key(e) for e, _ in items]
        args: list[bytes | int] = [self._ttl_ms, *(blob for _, blob in items)]
        try:
            result = await self._put_script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise _classify(exc, "write") from exc
        return [r != 0 for r in result]  # 1 written, 2 already stored (a retried write), 0 refused

    async def get(self, entity: str) -> StateRecord | None:
        (raw,) = await self.get_many([entity])
        return None if raw is None else decode(raw)

    async def aclose(self) -> None:
        await self._redis.aclose()
