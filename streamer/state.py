"""The state store: where the per-entity records live, and the Redis store that keeps them.

The record format and its codec are in :mod:`streamer.codec`; this module moves records in and out of
Redis, a whole batch per round trip: ``MGET`` to read, one Lua compare-and-set to write (on the
record each new state was stepped from, and on the fence). Against Redis Cluster
(``STREAMER_REDIS__CLUSTER``) a batch is split by hash slot and sent as one pipeline per node, all
nodes at once.
Keys are readable: ``streamer:{model}:{entity}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from binascii import crc_hqx
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    MovedError,
    NoPermissionError,
    NoScriptError,
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

from streamer.codec import StateRecord, decode
from streamer.errors import StateError, StoreUnavailable

if TYPE_CHECKING:
    from streamer.settings import Settings

__all__ = [
    "RedisClusterStateStore",
    "RedisStateStore",
    "StateStore",
    "base_of",
    "redis_client",
    "state_key",
]

#: A client of one Redis server or of a Redis Cluster; both take the same single-key commands.
Client = aioredis.Redis | RedisCluster


def state_key(model: str, entity: str) -> str:
    """The Redis key of an entity's state.

    >>> state_key("retail", "store-7")
    'streamer:retail:store-7'
    """
    return f"streamer:{model}:{entity}"


def _client(
    url: str,
    socket_timeout_s: float,
    username: str | None = None,
    password: str | None = None,
    ssl_ca_certs: str | None = None,
    cluster: bool = False,
) -> Any:
    extra: dict[str, Any] = {}
    if username:
        extra["username"] = username
    if password:
        extra["password"] = password
    if ssl_ca_certs and url.startswith("rediss://"):
        extra["ssl_ca_certs"] = ssl_ca_certs
    opts = dict(
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        decode_responses=False,
        **extra,
    )
    if cluster:
        # The URL is one node; the client asks it for the others and the slot map.
        return RedisCluster.from_url(url, **opts)
    return aioredis.Redis.from_url(url, **opts)


def redis_client(settings: Settings) -> Any:
    """A client as the settings describe it (URL, credentials, TLS, timeouts): of one Redis, or of
    a Redis Cluster (``redis.cluster``)."""
    r = settings.redis
    return _client(
        r.url,
        r.socket_timeout_s,
        r.username,
        r.password.get_secret_value() if r.password else None,
        str(r.ssl_ca_certs) if r.ssl_ca_certs else None,
        r.cluster,
    )


class StateStore(Protocol):
    """Where states live. Each call is one round trip, whatever the number of entities."""

    async def get_many(self, entities: Sequence[str]) -> list[bytes | None]:
        """The encoded records of the entities, ``None`` where an entity has none."""
        ...

    async def put_many(
        self, items: Sequence[tuple[str, bytes]], bases: Sequence[bytes] | None = None
    ) -> list[bool]:
        """Save records unless the stored one is as new or newer, or (with ``bases``) unless it is
        no longer the one each new record was stepped from; True where saved."""
        ...

    async def aclose(self) -> None: ...


# Compare-and-set for many keys in one call, on two things:
#
# - the base: bytes 36..55 of the header (fence and time of the last write) of the record the new
#   one was stepped from, "" for none. Anything that changed the stored record since it was read (a
#   zombie worker, `streamer state reset` or `delete`, an expiry, a Redis that lost it) refuses the
#   write, and the worker steps the events again from what Redis holds: Redis is the truth, never a
#   worker's memory of it. ARGV[2] = "1" when bases follow the records.
# - the fence (partition, offset) at bytes 36..47: a record is written when there is no valid record
#   yet, when the stored one came from another partition (the topic was recreated or repartitioned:
#   the new source wins), or when the stored offset is lower. A replay or a zombie worker cannot
#   roll back state.
#
# A refused write whose bytes are already stored counts as saved: retrying a write whose reply was
# lost (a timeout after Redis applied it) succeeds instead of dropping the batch's predictions.
_PUT_MANY_LUA = """
local ttl = tonumber(ARGV[1])
local based = ARGV[2] == '1'
local n = #KEYS
local out = {}
for i, key in ipairs(KEYS) do
  local new = ARGV[i + 2]
  local cur = redis.call('GETRANGE', key, 0, 55)
  local result = 1
  if based and string.sub(cur, 37, 56) ~= ARGV[n + i + 2] then
    result = 0
    if string.sub(cur, 37, 56) == string.sub(new, 37, 56) and redis.call('GET', key) == new then
      result = 2
    end
  elseif #cur >= 48 and string.sub(cur, 1, 4) == 'STRM' then
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


def base_of(record: bytes | None) -> bytes:
    """What the store's compare-and-set knows a record by: its fence and time of writing (bytes
    36..55 of the header), ``b""`` for no record.

    >>> base_of(None), len(base_of(bytes(80)))
    (b'', 20)
    """
    return b"" if record is None else record[36:56]


def _pack(args: Sequence[bytes]) -> bytes:
    """One command in the Redis protocol (RESP).

    A batch command has hundreds of arguments; redis-py packs each through several Python calls,
    about three times the client CPU of this (measured: 5.2 against 2.3 µs per state written).

    >>> _pack([b"GET", b"k"])
    b'*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n'
    """
    return b"".join([b"*%d\r\n" % len(args), *[b"$%d\r\n%s\r\n" % (len(a), a) for a in args]])


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
_FAULTS = (RedisError, RedisClusterException, OSError)


def classify_redis_error(exc: BaseException, what: str) -> Exception:
    """:class:`StoreUnavailable` for faults that pass; other Redis errors are bugs and propagate."""
    if isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    ):
        return StateError(
            f"redis refused the credentials ({type(exc).__name__}); check STREAMER_REDIS__*"
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


class RedisStateStore:
    """States in Redis: MGET to read, one Lua compare-and-set to write, a TTL per key.

    Both are one round trip per batch, packed by hand (:func:`_pack`) and sent on a pooled
    connection.
    """

    def __init__(self, client: Any, model: str, ttl_s: int = 0):
        self._redis = client
        self._model = model
        self._prefix = state_key(model, "").encode()
        self._ttl_ms = ttl_s * 1000
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
        client = _client(url, socket_timeout_s, username, password, ssl_ca_certs, cluster)
        return (RedisClusterStateStore if cluster else RedisStateStore)(client, model, ttl_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStateStore:
        """The store the settings name: of one Redis, or of a Redis Cluster."""
        kind = RedisClusterStateStore if settings.redis.cluster else RedisStateStore
        return kind(redis_client(settings), settings.model_name, settings.state_ttl_s)

    @property
    def redis(self) -> Any:
        return self._redis

    def key(self, entity: str) -> str:
        return state_key(self._model, entity)

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
        self, items: Sequence[tuple[str, bytes]], bases: Sequence[bytes] | None = None
    ) -> list[bool]:
        """Save ``(entity, record)`` items, each unless a newer record is stored, or (with
        ``bases``: :func:`base_of` the record each was stepped from, ``b""`` for none) unless the
        stored record is no longer that one. True where saved (or already stored)."""
        if not items:
            return []
        if bases is not None and len(bases) != len(items):
            raise ValueError(f"{len(bases)} bases for {len(items)} records")
        command = _pack(self._put_args(items, bases))
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
        self, items: Sequence[tuple[str, bytes]], bases: Sequence[bytes] | None
    ) -> list[bytes]:
        return [
            b"EVALSHA",
            self._put_sha,
            b"%d" % len(items),
            *(self._prefix + e.encode() for e, _ in items),
            b"%d" % self._ttl_ms,
            b"0" if bases is None else b"1",
            *(blob for _, blob in items),
            *(bases or ()),
        ]

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
        kind = RedisClusterStateStore if isinstance(client, RedisCluster) else RedisStateStore
        return kind(client, model, ttl_s)

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


#: Redirections followed for one batch before it fails (and the worker waits and retries).
_MAX_REDIRECTS = 5
_ASKING = b"*1\r\n$6\r\nASKING\r\n"


class RedisClusterStateStore(RedisStateStore):
    """States in Redis Cluster: the same keys, records and compare-and-set as :class:`RedisStateStore`.

    A key's slot decides its node, and Redis refuses a command whose keys span slots. So a batch is
    split by slot, one ``MGET`` or compare-and-set per slot (the set stays atomic per key, as it
    is per key on one Redis), and every node gets its slots' commands as one pipeline, all nodes at
    once: one round trip per batch whatever the number of nodes. The slot map is redis-py's
    cluster client's; a command that a node sends elsewhere (MOVED after a resharding or a
    failover, ASK during a migration) is sent there in a next round (:meth:`_send`).
    """

    def __init__(self, client: RedisCluster, model: str, ttl_s: int = 0):
        super().__init__(client, model, ttl_s)
        #: per lane, a connection of each node, taken once (like the single store's lanes)
        self._nodes: dict[str, dict[str, tuple[ClusterNode, Any]]] = {"read": {}, "write": {}}
        self._stale = False  # a node failed: ask the cluster for its map again before going on

    async def get_many(self, entities: Sequence[str]) -> list[bytes | None]:
        if not entities:
            return []
        keys = [self._prefix + e.encode() for e in entities]
        groups = _by_slot(keys)

        def args(idx: list[int]) -> list[bytes]:
            return [b"MGET", *[keys[i] for i in idx]]

        # Most slots of a batch hold one of its keys: those are packed with one format.
        packed = [
            b"*2\r\n$4\r\nMGET\r\n$%d\r\n%s\r\n" % (len(keys[idx[0]]), keys[idx[0]])
            if len(idx) == 1
            else _pack(args(idx))
            for _, idx in groups
        ]
        try:
            replies = await self._send(groups, packed, "read")
        except _FAULTS as exc:
            raise classify_redis_error(exc, "read") from exc
        out: list[bytes | None] = [None] * len(keys)
        for (_, idx), values in zip(groups, replies, strict=True):
            for i, v in zip(idx, values, strict=True):
                out[i] = v
        return out

    async def put_many(
        self, items: Sequence[tuple[str, bytes]], bases: Sequence[bytes] | None = None
    ) -> list[bool]:
        if not items:
            return []
        if bases is not None and len(bases) != len(items):
            raise ValueError(f"{len(bases)} bases for {len(items)} records")
        keys = [self._prefix + e.encode() for e, _ in items]
        groups = _by_slot(keys)

        def args(idx: list[int]) -> list[bytes]:
            return self._put_args(
                [items[i] for i in idx], None if bases is None else [bases[i] for i in idx]
            )

        # One key's compare-and-set: the script, 1 key, the key, ttl, flag, record[, base].
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n" % (
            7 if bases is None else 8,
            self._put_sha,
        )
        ttl = b"%d" % self._ttl_ms
        mid = b"$%d\r\n%s\r\n$1\r\n%s\r\n" % (len(ttl), ttl, b"0" if bases is None else b"1")
        packed = []
        for _, idx in groups:
            if len(idx) > 1:
                packed.append(_pack(args(idx)))
                continue
            i = idx[0]
            blob = items[i][1]
            one = b"%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n" % (
                head,
                len(keys[i]),
                keys[i],
                mid,
                len(blob),
                blob,
            )
            if bases is not None:
                one += b"$%d\r\n%s\r\n" % (len(bases[i]), bases[i])
            packed.append(one)
        try:
            try:
                replies = await self._send(groups, packed, "write")
            except NoScriptError:
                await self._redis.script_load(_PUT_MANY_LUA)  # on every primary
                replies = await self._send(groups, packed, "write")
        except _FAULTS as exc:
            raise classify_redis_error(exc, "write") from exc
        saved = [False] * len(items)
        for (_, idx), result in zip(groups, replies, strict=True):
            for i, r in zip(idx, result, strict=True):
                saved[i] = r != 0
        return saved

    async def _send(
        self, groups: list[tuple[int, list[int]]], packed: list[bytes], lane: str
    ) -> list[Any]:
        """Each group's packed command to its slot's primary, a pipeline per node, the nodes at
        once; the replies in order.

        A command a node sends elsewhere goes again, in the next round: after MOVED to the slot's
        new owner (redis-py's slot map updated), after ASK to the importing node preceded by
        ASKING on the same connection. (redis-py's own async ASK path sends ASKING and the command
        on connections it takes from the node's pool one at a time, not always the same one.)
        """
        async with self._lanes[lane][0]:
            cluster: RedisCluster = self._redis
            if self._stale:  # a node failed: its slots may have a new primary by now
                await self._drop(lane)
                await cluster.nodes_manager.initialize()
                self._stale = False
            await cluster.initialize()  # once: the slot map from the first node that answers
            manager = cluster.nodes_manager
            targets = [manager.get_node_from_slot(slot) for slot, _ in groups]
            asking = [False] * len(groups)
            replies: list[Any] = [None] * len(groups)
            pending = list(range(len(groups)))
            for _ in range(_MAX_REDIRECTS):
                per_node: dict[str, list[int]] = {}
                for j in pending:
                    per_node.setdefault(targets[j].name, []).append(j)
                done = await asyncio.gather(
                    *(
                        self._pipeline(
                            lane, targets[js[0]], [packed[j] for j in js], [asking[j] for j in js]
                        )
                        for js in per_node.values()
                    ),
                    return_exceptions=True,
                )
                pending = []
                for js, got in zip(per_node.values(), done, strict=True):
                    if isinstance(got, BaseException):
                        self._stale = isinstance(
                            got, RedisConnectionError | RedisTimeoutError | OSError
                        )
                        raise got
                    for j, reply in zip(js, got, strict=True):
                        if isinstance(reply, MovedError):  # the slot has a new owner
                            await manager.move_slot(reply)
                            targets[j], asking[j] = manager.get_node_from_slot(groups[j][0]), False
                            pending.append(j)
                        elif isinstance(reply, AskError):  # the slot is migrating, the key gone
                            node = cluster.get_node(host=reply.host, port=reply.port)
                            if node is None:  # a node the map does not know yet
                                self._stale = True
                                raise reply
                            targets[j], asking[j] = node, True
                            pending.append(j)
                        else:
                            replies[j] = reply
                if not pending:
                    break
            else:
                raise ClusterError(f"redirected {_MAX_REDIRECTS} times: the slots keep moving")
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def _pipeline(
        self, lane: str, node: ClusterNode, commands: list[bytes], asking: list[bool]
    ) -> list[Any]:
        """The commands to one node in one write (each with ASKING before it where ``asking``),
        their replies (errors as values) in order."""
        held = self._nodes[lane]
        if node.name in held and held[node.name][0] is not node:  # the map changed: a new node
            old, conn = held.pop(node.name)
            await conn.disconnect()
            old.release(conn)
        if node.name not in held:
            held[node.name] = (node, node.acquire_connection())
        conn = held[node.name][1]
        try:
            await conn.send_packed_command(
                b"".join([_ASKING + c if a else c for c, a in zip(commands, asking, strict=True)])
            )
            # The replies are read from the connection's parser under one time limit for all:
            # `read_response` arms a timer per reply, most of the client's time for a batch of
            # hundreds of one-key commands. The parser hands error replies over as values.
            read = conn._parser.read_response
            out = []
            async with asyncio.timeout(conn.socket_timeout):
                for a in asking:
                    if a:
                        await read()  # ASKING's OK
                    out.append(await read())
            return out
        except BaseException:
            await conn.disconnect()  # a reply may still be on its way: never reuse the stream
            raise

    async def scan(
        self, pattern: str, cursor: int = 0, count: int = 1000
    ) -> AsyncIterator[tuple[int, list[str]]]:
        """Each primary scanned in turn (in order of name); the cursor is the node's SCAN cursor
        times the number of primaries plus the node's position."""
        cluster: RedisCluster = self._redis
        await cluster.initialize()
        nodes = sorted(cluster.get_primaries(), key=lambda n: n.name)
        match, skip = self._match(pattern), len(self._prefix)
        at, cursor = cursor % len(nodes), cursor // len(nodes)
        while at < len(nodes):
            cursor, keys = await nodes[at].execute_command(
                "SCAN", cursor, "MATCH", match, "COUNT", count
            )
            cursor = int(cursor)
            if cursor == 0:
                at += 1
            following = 0 if at == len(nodes) else cursor * len(nodes) + at
            yield following, [_text(k)[skip:] for k in keys]
            if following == 0:
                return

    async def _drop(self, lane: str) -> None:
        held = self._nodes[lane]
        while held:
            _, (node, conn) = held.popitem()
            await conn.disconnect()
            node.release(conn)

    async def aclose(self) -> None:
        for lane in self._nodes:
            await self._drop(lane)
        await self._redis.aclose()


def _text(b: bytes | str) -> str:
    return b.decode() if isinstance(b, bytes) else b


def _by_slot(keys: Sequence[bytes]) -> list[tuple[int, list[int]]]:
    """The keys' positions grouped by hash slot, in order of first appearance.

    >>> _by_slot([b"a", b"b", b"{a}x"])
    [(15495, [0, 2]), (3300, [1])]
    """
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        # key_slot() itself for keys with a hash tag; the same CRC16 inline for the others
        slot = key_slot(key) if b"{" in key else crc_hqx(key, 0) & 16383
        if slot in groups:
            groups[slot].append(i)
        else:
            groups[slot] = [i]
    return list(groups.items())
