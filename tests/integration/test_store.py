"""What is Redis's own in the Redis stores (the contract every store keeps is ``tests/contract/``):
TTLs as Redis keeps them; in the cluster, batches over every node and many slots, slots that move
(ASK during a migration, MOVED after it) and scripts a node forgot."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from streamer.errors import StoreUnavailable
from streamer.state import RedisClusterStateStore, RedisStateStore
from streamer.state.codec import decode
from tests.conftest import REDIS_PORT
from tests.contract.test_store_contract import rec
from tests.unit.test_cli import run


@pytest.fixture
async def store(redis_kind: dict[str, str], ns: str):  # type: ignore[no-untyped-def]
    cluster = redis_kind.get("redis_cluster") == "1"
    s = RedisStateStore.from_url(redis_kind["redis_url"], ns, ttl_s=600, cluster=cluster)
    assert isinstance(s, RedisClusterStateStore) == cluster
    yield s
    await s.aclose()


async def test_get_and_put_many_round_trip(store: RedisStateStore) -> None:
    assert await store.get_many(["a", "b"]) == [None, None]
    assert await store.put_many([("a", rec(5)), ("b", rec(7, fill=1.0))]) == [True, True]
    a, b, c = await store.get_many(["a", "b", "c"])
    assert a is not None and b is not None and c is None
    assert decode(a).offset == 5 and decode(b).h[0, 0] == 1.0
    ttl = await store.redis.pttl(store.key("a"))
    assert 590_000 < ttl <= 600_000


async def test_ttl_zero_keeps_states_forever(redis_kind: dict[str, str], ns: str) -> None:
    cluster = redis_kind.get("redis_cluster") == "1"
    s = RedisStateStore.from_url(redis_kind["redis_url"], ns, ttl_s=0, cluster=cluster)
    try:
        await s.put_many([("k", rec(0))])
        assert await s.redis.pttl(s.key("k")) == -1
    finally:
        await s.aclose()


# -------------------------------------------------------------------------------- Redis Cluster --


@pytest.fixture
async def cluster_store(redis_cluster: dict[str, str], ns: str):  # type: ignore[no-untyped-def]
    s = RedisStateStore.from_url(redis_cluster["redis_url"], ns, ttl_s=600, cluster=True)
    yield s
    await s.aclose()


async def test_a_batch_over_every_node_and_shared_slots(cluster_store: RedisStateStore) -> None:
    # Entities with a hash tag share a slot: those go as one MGET and one compare-and-set.
    entities = [f"e{i}" for i in range(600)] + [f"{{tag}}{i}" for i in range(40)]
    items = [(e, rec(i, fill=float(i))) for i, e in enumerate(entities)]
    assert await cluster_store.put_many(items) == [True] * len(items)
    cluster: RedisCluster = cluster_store.redis
    owners = {
        cluster.nodes_manager.get_node_from_slot(key_slot(cluster_store.key(e).encode())).name
        for e in entities
    }
    assert len(owners) == 3, owners
    got = await cluster_store.get_many([*reversed(entities), "absent"])
    assert got[-1] is None
    assert [decode(g).h[0, 0] for g in got[:-1]] == [float(i) for i in reversed(range(640))]  # type: ignore[arg-type]
    # A mixed batch, decided key by key across nodes: every even one is stale.
    mixed = [(e, rec(i + (1 if i % 2 else -1))) for i, e in enumerate(entities)]
    assert await cluster_store.put_many(mixed) == [i % 2 == 1 for i in range(len(entities))]


def _cli(port: int, *args: str) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and not out.stdout.startswith("ERR"), (args, out.stdout)
    return out.stdout.strip()


async def test_slots_moving_under_a_running_store(
    redis_cluster: dict[str, str], cluster_store: RedisStateStore, ns: str
) -> None:
    """A slot migrates between nodes while the store keeps its old slot map: a key not yet moved
    is served where it was, a new key is redirected (ASK) to the importing node, a batch needing
    both waits (TRYAGAIN: the worker retries), and once the slot has moved every key is
    redirected (MOVED) and the map updated for the next batch."""
    ports = [int(p) for p in redis_cluster["cluster_ports"].split(",")]
    cluster: RedisCluster = cluster_store.redis
    old, new = f"{{{ns}}}old", f"{{{ns}}}new"  # one hash tag: one slot
    slot = key_slot(ns.encode())
    assert await cluster_store.put_many([(old, rec(1)), ("elsewhere", rec(1))]) == [True, True]
    foreign = f"not-streamer:{{{ns}}}"  # another key in the slot: a resharding moves it too
    await cluster.set(foreign, b"kept")
    src = cluster.nodes_manager.get_node_from_slot(slot).port
    dst = next(p for p in ports if p != src)
    ids = {p: _cli(p, "cluster", "myid") for p in ports}
    moved = False
    try:
        _cli(dst, "cluster", "setslot", str(slot), "importing", ids[src])
        _cli(src, "cluster", "setslot", str(slot), "migrating", ids[dst])
        # Mid-migration: the old key is still on the source; a new key is sent on (ASK).
        assert await cluster_store.put_many([(old, rec(2))]) == [True]
        assert await cluster_store.put_many([(new, rec(1))]) == [True]
        assert _cli(dst, "cluster", "countkeysinslot", str(slot)) == "1"  # the new key
        with pytest.raises(StoreUnavailable, match="TryAgain"):
            await cluster_store.get_many([old, new])  # one MGET over both sides of the move
        got = await cluster_store.get_many(["elsewhere"])
        assert decode(got[0]).offset == 1  # type: ignore[arg-type]
        # Move the slot's keys (ours, and any other test's that hash to it), then hand it over.
        keys = _cli(src, "cluster", "getkeysinslot", str(slot), "1000").split()
        assert cluster_store.key(old) in keys
        _cli(src, "migrate", "127.0.0.1", str(dst), "", "0", "5000", "keys", *keys)
        for p in ports:
            _cli(p, "cluster", "setslot", str(slot), "node", ids[dst])
        moved = True
        # The store still believes the source owns the slot: MOVED, followed.
        assert await cluster_store.put_many([(old, rec(3)), (new, rec(2))]) == [True, True]
        assert cluster.nodes_manager.get_node_from_slot(slot).port == dst
        got = await cluster_store.get_many([old, new])
        assert [decode(g).offset for g in got] == [3, 2]  # type: ignore[arg-type]
        assert await cluster_store.put_many([(old, rec(1))]) == [False]  # the fence still holds
    finally:  # give the slot back, with its keys, whatever happened
        for p in ports:
            _cli(p, "cluster", "setslot", str(slot), "stable")
        keys = _cli(dst, "cluster", "getkeysinslot", str(slot), "1000").split()
        if moved:
            _cli(src, "cluster", "setslot", str(slot), "importing", ids[dst])
            _cli(dst, "cluster", "setslot", str(slot), "migrating", ids[src])
        if keys:
            _cli(dst, "migrate", "127.0.0.1", str(src), "", "0", "5000", "keys", *keys)
        if moved:
            for p in ports:
                _cli(p, "cluster", "setslot", str(slot), "node", ids[src])
    got = await cluster_store.get_many([old, new])
    assert [decode(g).offset for g in got] == [3, 2]  # type: ignore[arg-type]
    assert await cluster.get(foreign) == b"kept"
    await cluster.delete(foreign)


async def test_a_node_that_forgot_the_script_gets_it_again(
    redis_cluster: dict[str, str], cluster_store: RedisStateStore
) -> None:
    entities = [f"s{i}" for i in range(60)]
    assert await cluster_store.put_many([(e, rec(1)) for e in entities]) == [True] * 60
    for p in redis_cluster["cluster_ports"].split(","):
        _cli(int(p), "script", "flush")  # as after a restart
    assert await cluster_store.put_many([(e, rec(2)) for e in entities]) == [True] * 60
    assert {decode(g).offset for g in await cluster_store.get_many(entities)} == {2}  # type: ignore[arg-type]


@pytest.mark.parametrize("wrong", ["cluster-read-as-one-redis", "one-redis-read-as-a-cluster"])
def test_a_worker_told_the_wrong_kind_of_redis_says_so_in_one_line(
    redis_cluster: dict[str, str], ns: str, model_dir: Path, wrong: str
) -> None:
    cluster = wrong == "one-redis-read-as-a-cluster"
    url = redis_cluster["redis_url"] if not cluster else f"redis://127.0.0.1:{REDIS_PORT}/0"
    env = {
        "STREAMER_APP_ID": ns,
        "STREAMER_MODEL_PATH": str(model_dir),
        "STREAMER_REDIS__URL": url,
        "STREAMER_REDIS__CLUSTER": "1" if cluster else "0",
        "STREAMER_KAFKA__BOOTSTRAP_SERVERS": redis_cluster["bootstrap"],
        "STREAMER_METRICS__PORT": "0",
    }
    r = run("worker", env=env, timeout=60)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    hint = "no cluster node" if cluster else "set STREAMER_REDIS__CLUSTER=1"
    assert r.stderr.startswith("streamer: error: ") and hint in r.stderr, r.stderr
