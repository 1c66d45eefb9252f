"""The Redis store: states in one Redis server, a whole batch per round trip.

``MGET`` to read, one Lua compare-and-set to write (on the record each new state was stepped from,
and on the fence). The record's bytes are :mod:`streamer.state.codec`'s; the script reads the fence
and base fields at the offsets the codec names. Redis Cluster is :mod:`streamer.state.cluster`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from string import Template
from typing import TYPE_CHECKING, Any

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    NoScriptError,
)

from streamer.state.codec import BASE, FENCE, MAGIC, StateRecord, decode
from streamer.state.connect import FAULTS as _FAULTS
from streamer.state.connect import classify_redis_error, redis_client, redis_client_of
from streamer.state.store import OutboxPart, outbox_key, state_key

if TYPE_CHECKING:
    from streamer.settings import Settings

__all__ = [
    "RedisStateStore",
    "classify_redis_error",
    "redis_client",
]

#: A client of one Redis server or of a Redis Cluster; both take the same single-key commands.
Client = aioredis.Redis | RedisCluster


# Compare-and-set for many keys in one call, on two things:
#
# - the base (codec.BASE: the fence and time of the last write) of the record the new one was
#   stepped from, "" for none. Anything that changed the stored record since it was read (a
#   zombie worker, `streamer state reset` or `delete`, an expiry, a Redis that lost it) refuses the
#   write, and the worker steps the events again from what Redis holds: Redis is the truth, never a
#   worker's memory of it. ARGV[2] = "1" when bases follow the records.
# - the fence (codec.FENCE: partition, offset): a record is written when there is no valid record
#   yet, when the stored one came from another partition (the topic was recreated or
#   repartitioned: the new source wins), or when the stored offset is lower. A replay or a zombie
#   worker cannot roll back state.
#
# With bases, the fence is checked by the client (:func:`_fenced`): the stored record's fence is
# its base's, which the client knows, so the script compares 20 bytes and passes nothing through
# struct.unpack (Redis 7 hashes every string a script receives: the records dominate its cost, and
# each step saved counts; measured 29% fewer server instructions per key than the check in Lua).
#
# A refused write whose bytes are already stored counts as saved: retrying a write whose reply was
# lost (a timeout after Redis applied it) succeeds instead of dropping the batch's predictions.
#
# The outbox: per partition of the batch, the predictions of its saved records go to a sorted set
# (one member per batch, scored by its last offset), in the same atomic call; members of batches
# whose events all lie below the partition's committed offset are dropped first. A refused record's
# entries are cut out (the bounds say whose bytes are whose). ARGV[3] = the number of outbox
# partitions, whose keys follow the state keys.
_PUT_MANY_LUA = Template(
    """
local ttl = ARGV[1]
local based = ARGV[2] == '1'
local m = tonumber(ARGV[3])
local n = #KEYS - m
local expire = ttl ~= '0'
local sub, call = string.sub, redis.call
local out = {}
local refused = false
for i = 1, n do
  local key = KEYS[i]
  local new, result = ARGV[i + 3], 1
  if based then
    -- the client checked the fence against the base: a write that fails it comes with a base
    -- one byte longer, which never matches
    local want = ARGV[n + i + 3]
    local cur = call('GETRANGE', key, '${base_start}', '${base_last}')
    if cur ~= want then
      result = 0
      if #want == ${base_long} and cur == sub(want, 1, ${base_len})
          and call('GETRANGE', key, '0', '3') ~= '${magic}' then
        result = 1  -- the base is that of bytes that are no record: written over
      elseif cur == sub(new, ${base_a}, ${base_b}) and call('GET', key) == new then
        result = 2
      end
    end
  else
    local cur = call('GETRANGE', key, '0', '${base_last}')
    if #cur >= ${fence_b} and sub(cur, 1, 4) == '${magic}' then
      local cp, co = struct.unpack('<i4i8', sub(cur, ${fence_a}, ${fence_b}))
      local np, no = struct.unpack('<i4i8', sub(new, ${fence_a}, ${fence_b}))
      if cp == np and co >= no then
        result = 0
        if co == no and call('GET', key) == new then result = 2 end
      end
    end
  end
  if result == 1 then
    if expire then call('SET', key, new, 'PX', ttl) else call('SET', key, new) end
  elseif result == 0 then
    refused = true
  end
  out[i] = result
end
local at = 3 + n
if based then at = at + n end
for j = 1, m do
  local box = KEYS[n + j]
  local score, blob, trim, bounds = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  at = at + 4
  if trim ~= '-1' then call('ZREMRANGEBYSCORE', box, '-inf', '(' .. trim) end
  if refused then
    local parts = {}
    for b = 1, #bounds, 12 do
      local i, start, len = struct.unpack('<I4I4I4', sub(bounds, b, b + 11))
      if out[i] ~= 0 then parts[#parts + 1] = sub(blob, start + 1, start + len) end
    end
    blob = table.concat(parts)
  end
  if #blob > 0 then
    call('ZADD', box, score, blob)
    if expire then call('PEXPIRE', box, ttl) end
  end
end
return out
"""
).substitute(
    # Lua strings count from 1, both ends included; GETRANGE counts from 0
    base_a=BASE.start + 1,
    base_b=BASE.stop,
    base_start=BASE.start,
    base_last=BASE.stop - 1,
    base_len=BASE.stop - BASE.start,
    base_long=BASE.stop - BASE.start + 1,
    fence_a=FENCE.start + 1,
    fence_b=FENCE.stop,
    magic=MAGIC.decode(),
)


def _pack(args: Sequence[bytes]) -> bytes:
    """One command in the Redis protocol (RESP).

    A batch command has thousands of arguments, most of them in runs of one length (the records
    of a model are all as long, so are most keys and bases): each run is packed with one
    ``join``. (redis-py packs each argument through several Python calls: about three times the
    client CPU of packing them one by one here, which this halves again.)

    >>> _pack([b"GET", b"k"])
    b'*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n'
    >>> _pack([b"a", b"b", b"cc"]) == b"*3\\r\\n$1\\r\\na\\r\\n$1\\r\\nb\\r\\n$2\\r\\ncc\\r\\n"
    True
    """
    n = len(args)
    lengths = np.fromiter(map(len, args), np.int64, n)
    cuts = np.flatnonzero(np.diff(lengths)) + 1
    out = [b"*%d\r\n" % n]
    for a, b in itertools.pairwise([0, *cuts.tolist(), n]):
        head = b"$%d\r\n" % lengths[a]
        out.append(head + (b"\r\n" + head).join(args[a:b]) + b"\r\n")
    return b"".join(out)


class RedisStateStore:
    """States in Redis: MGET to read, one Lua compare-and-set to write, a TTL per key; the
    predictions kept for re-emission in an outbox per partition, written in the same call.

    Both are one round trip per batch, packed by hand (:func:`_pack`) and sent on a pooled
    connection.
    """

    outbox = True

    def __init__(self, client: Any, model: str, ttl_s: int = 0):
        self._redis = client
        self._model = model
        self._prefix = state_key(model, "").encode()
        self._ttl_ms = ttl_s * 1000
        self._ttl_arg = b"%d" % self._ttl_ms
        self._box = outbox_key(model, 0).encode()[:-1]
        self._put_sha = hashlib.sha1(_PUT_MANY_LUA.encode()).hexdigest().encode()
        #: one connection each for reads and writes, so the predictor can read the next batch's
        #: states while this batch's write is on its way
        self._lanes: dict[str, tuple[asyncio.Lock, list[Any]]] = {
            "read": (asyncio.Lock(), []),
            "write": (asyncio.Lock(), []),
        }

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
        cluster: bool = False,
    ) -> RedisStateStore:
        client = redis_client_of(url, socket_timeout_s, username, password, ssl_ca_certs, cluster)
        return _kind(cluster)(client, model, ttl_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStateStore:
        """The store the settings name: of one Redis, or of a Redis Cluster."""
        kind = _kind(settings.redis.cluster)
        return kind(redis_client(settings), settings.model_name, settings.state_ttl_s)

    @property
    def redis(self) -> Any:
        return self._redis

    def key(self, entity: str) -> str:
        return state_key(self._model, entity)

    async def ping(self) -> None:
        """One round trip: raises what a store call would (:class:`StoreUnavailable` for an
        outage, :class:`StateError` for settings that can never work)."""
        try:
            await self._redis.ping()
        except _FAULTS as exc:
            raise classify_redis_error(exc, "ping") from exc

    async def get_many(self, entities: Sequence[str]) -> list[bytes | None]:
        if not entities:
            return []
        try:
            values: list[bytes | None] = await self._call(
                _pack([b"MGET", *(self._prefix + e.encode() for e in entities)]), "read"
            )
        except _FAULTS as exc:
            raise classify_redis_error(exc, "read") from exc
        return values

    async def put_many(
        self,
        items: Sequence[tuple[str, bytes]],
        bases: Sequence[bytes] | None = None,
        outbox: Sequence[OutboxPart] = (),
    ) -> list[bool]:
        """Save ``(entity, record)`` items, each unless a newer record is stored, or (with
        ``bases``: :func:`base_of` the record each was stepped from, ``b""`` for none) unless the
        stored record is no longer that one. True where saved (or already stored). The outbox
        parts' entries of the saved records are kept in the same call."""
        if not items:
            return []
        if bases is not None and len(bases) != len(items):
            raise ValueError(f"{len(bases)} bases for {len(items)} records")
        command = _pack(self._put_args(items, bases, outbox))
        try:
            try:
                result = await self._call(command, "write")
            except NoScriptError:
                await self._redis.script_load(_PUT_MANY_LUA)  # a restarted Redis forgot it
                result = await self._call(command, "write")
        except _FAULTS as exc:
            raise classify_redis_error(exc, "write") from exc
        return [r != 0 for r in result]  # 1 written, 2 already stored (a retried write), 0 refused

    def _put_args(
        self,
        items: Sequence[tuple[str, bytes]],
        bases: Sequence[bytes] | None,
        outbox: Sequence[OutboxPart] = (),
    ) -> list[bytes]:
        if bases is not None:
            bases = _fenced(items, bases)
        boxes = [
            a
            for part in outbox
            for a in (b"%d" % part.last_offset, part.blob, b"%d" % part.trim, part.bounds)
        ]
        return [
            b"EVALSHA",
            self._put_sha,
            b"%d" % (len(items) + len(outbox)),
            *(self._prefix + e.encode() for e, _ in items),
            *(self._box + b"%d" % part.partition for part in outbox),
            self._ttl_arg,
            b"0" if bases is None else b"1",
            b"%d" % len(outbox),
            *(blob for _, blob in items),
            *(bases or ()),
            *boxes,
        ]

    async def kept(self, partition: int, since: int) -> list[bytes]:
        try:
            got: list[bytes] = await self._redis.zrangebyscore(
                self._box + b"%d" % partition, since, "+inf"
            )
        except _FAULTS as exc:
            raise classify_redis_error(exc, "read") from exc
        return got

    async def trim(self, committed: Mapping[int, int]) -> None:
        if not committed:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for p, offset in committed.items():
                    pipe.zremrangebyscore(self._box + b"%d" % p, "-inf", f"({offset}")
                await pipe.execute()
        except _FAULTS as exc:
            raise classify_redis_error(exc, "write") from exc

    async def _call(self, command: bytes, lane: str) -> Any:
        """Send one packed command and read its reply, on the lane's own connection (taken from
        the pool once: checking one out per call costs more than the call's packing)."""
        lock, held = self._lanes[lane]
        async with lock:
            if not held:
                held.append(await self._redis.connection_pool.get_connection())
            conn = held[0]
            try:
                await conn.send_packed_command(command)  # reconnects after a disconnect
                return await conn.read_response()
            except BaseException:
                await conn.disconnect()  # a reply may still be on its way: never reuse the stream
                raise

    @classmethod
    def around(cls, client: Any, model: str, ttl_s: int = 0) -> RedisStateStore:
        """The store of ``model`` on a client made elsewhere (of one Redis, or of a cluster)."""
        return _kind(isinstance(client, RedisCluster))(client, model, ttl_s)

    def _match(self, pattern: str) -> str:
        """The SCAN pattern of the entities matching ``pattern`` (the model name is literal)."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", state_key(self._model, "")) + pattern

    async def scan(
        self, pattern: str, cursor: int = 0, count: int = 1000
    ) -> AsyncIterator[tuple[int, list[str]]]:
        """Pages of entity ids whose key matches ``streamer:{model}:{pattern}``, with the cursor
        that continues after each page (0 after the last): SCAN, never KEYS. SCAN may yield a key
        twice if Redis resizes its table meanwhile."""
        match, skip = self._match(pattern), len(self._prefix)
        while True:
            cursor, keys = await self._redis.scan(cursor, match=match, count=count)
            yield cursor, [_text(k)[skip:] for k in keys]
            if cursor == 0:
                return

    async def get(self, entity: str) -> StateRecord | None:
        (raw,) = await self.get_many([entity])
        return None if raw is None else decode(raw)

    async def aclose(self) -> None:
        for _, held in self._lanes.values():
            while held:
                await self._redis.connection_pool.release(held.pop())
        await self._redis.aclose()


_FENCE_DT = np.dtype([("partition", "<i4"), ("offset", "<i8")])


def _fenced(items: Sequence[tuple[str, bytes]], bases: Sequence[bytes]) -> list[bytes]:
    """The bases as the script takes them: one whose fence is at or past the new record's on the
    same partition (a replay, a zombie: the write must be refused) gets a byte more, and so
    matches nothing stored.

    >>> old, new = bytes(36) + bytes(20), bytes(36) + b"\\0" * 4 + (5).to_bytes(8, "little")
    >>> [len(b) for b in _fenced([("e", new), ("f", old)], [old[36:], new[36:48] + bytes(8)])]
    [20, 21]
    """
    out = list(bases)
    full = [i for i, b in enumerate(bases) if len(b) == BASE.stop - BASE.start]
    if not full:
        return out
    was = np.frombuffer(b"".join([bases[i][: FENCE.stop - FENCE.start] for i in full]), _FENCE_DT)
    width = FENCE.stop - FENCE.start
    now = np.frombuffer(b"".join([items[i][1][FENCE].ljust(width, b"\0") for i in full]), _FENCE_DT)
    stale = (was["partition"] == now["partition"]) & (was["offset"] >= now["offset"])
    for i in np.flatnonzero(stale).tolist():
        out[full[i]] = bases[full[i]] + b"!"
    return out


def _kind(cluster: bool) -> type[RedisStateStore]:
    if not cluster:
        return RedisStateStore
    from streamer.state.cluster import RedisClusterStateStore  # (it builds on this module)

    return RedisClusterStateStore


def _text(b: bytes | str) -> str:
    return b.decode() if isinstance(b, bytes) else b
