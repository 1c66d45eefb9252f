"""The Redis Cluster store: the same keys, records and compare-and-set as one Redis, per slot."""

from __future__ import annotations

import asyncio
from binascii import crc_hqx
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterError, MovedError, NoScriptError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamer.state.connect import FAULTS as _FAULTS
from streamer.state.connect import classify_redis_error
from streamer.state.redis import (
    _PUT_MANY_LUA,
    RedisStateStore,
    _fenced,
    _pack,
    _text,
)
from streamer.state.store import OutboxPart

__all__ = ["RedisClusterStateStore"]

#: Redirections followed for one batch before it fails (and the worker waits and retries).
_MAX_REDIRECTS = 5
_ASKING = b"*1\r\n$6\r\nASKING\r\n"


class RedisClusterStateStore(RedisStateStore):
    """States in Redis Cluster: the same keys, records and compare-and-set as :class:`RedisStateStore`,
    but no outbox: a partition's outbox would live in one slot, and a script cannot write it
    together with states of other slots, so the predictions kept for re-emission stay inside the
    records (a state at rest holds the predictions of its last batch).

    A key's slot decides its node, and Redis refuses a command whose keys span slots. So a batch is
    split by slot, one ``MGET`` or compare-and-set per slot (the set stays atomic per key, as it
    is per key on one Redis), and every node gets its slots' commands as one pipeline, all nodes at
    once: one round trip per batch whatever the number of nodes. The slot map is redis-py's
    cluster client's; a command that a node sends elsewhere (MOVED after a resharding or a
    failover, ASK during a migration) is sent there in a next round (:meth:`_send`).
    """

    outbox = False

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
        self,
        items: Sequence[tuple[str, bytes]],
        bases: Sequence[bytes] | None = None,
        outbox: Sequence[OutboxPart] = (),
    ) -> list[bool]:
        if outbox:
            raise ValueError("Redis Cluster keeps kept predictions inside the records: no outbox")
        if not items:
            return []
        if bases is not None and len(bases) != len(items):
            raise ValueError(f"{len(bases)} bases for {len(items)} records")
        keys = [self._prefix + e.encode() for e, _ in items]
        groups = _by_slot(keys)
        if bases is not None:
            bases = _fenced(items, bases)

        def args(idx: list[int]) -> list[bytes]:
            return self._put_args(
                [items[i] for i in idx], None if bases is None else [bases[i] for i in idx]
            )

        # One key's compare-and-set: the script, 1 key, the key, ttl, flag, 0 outbox parts,
        # record[, base].
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n" % (
            8 if bases is None else 9,
            self._put_sha,
        )
        ttl = self._ttl_arg
        mid = b"$%d\r\n%s\r\n$1\r\n%s\r\n$1\r\n0\r\n" % (
            len(ttl),
            ttl,
            b"0" if bases is None else b"1",
        )
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

    async def kept(self, partition: int, since: int) -> list[bytes]:
        return []

    async def trim(self, committed: Mapping[int, int]) -> None:
        return None

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
