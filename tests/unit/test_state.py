"""The state store's pieces that need no server: which Redis errors mean "wait and retry", and the
grouping of a batch by Redis Cluster hash slot."""

from __future__ import annotations

import random

import pytest
from redis._parsers.base import BaseParser
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from streamer.errors import StateError, StoreUnavailable
from streamer.state.cluster import _by_slot
from streamer.state.redis import classify_redis_error


@pytest.mark.parametrize(
    "reply",
    [
        "OOM command not allowed when used memory > 'maxmemory'.",
        "READONLY You can't write against a read only replica.",
        "LOADING Redis is loading the dataset in memory",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "CLUSTERDOWN The cluster is down",
        "BUSY Redis is busy running a script.",
        "NOREPLICAS Not enough good replicas to write.",
    ],
)
def test_replies_that_pass_make_the_worker_wait(reply: str) -> None:
    # As redis-py hands them over: most with a class of their own and the code cut off.
    assert type(classify_redis_error(BaseParser.parse_error(reply), "write")) is StoreUnavailable


@pytest.mark.parametrize(
    "exc",
    [
        BaseParser.parse_error("ERR unknown command 'EVALSHA'"),
        BaseParser.parse_error("CROSSSLOT Keys in request don't hash to the same slot"),
        BaseParser.parse_error("WRONGTYPE Operation against a key holding the wrong kind"),
        RedisClusterException("Cluster mode is not enabled on this node"),
    ],
)
def test_other_errors_are_not_waited_for(exc: Exception) -> None:
    out = classify_redis_error(exc, "read")
    assert isinstance(out, StateError) and not isinstance(out, StoreUnavailable)


@pytest.mark.parametrize(
    "exc",
    [
        BaseParser.parse_error("MOVED 3999 127.0.0.1:6381"),
        BaseParser.parse_error("ASK 3999 127.0.0.1:6381"),
        BaseParser.parse_error("CROSSSLOT Keys in request don't hash to the same slot"),
    ],
)
def test_a_cluster_read_as_one_redis_says_what_to_set(exc: Exception) -> None:
    out = classify_redis_error(exc, "read")
    assert not isinstance(out, StoreUnavailable) and "STREAMER_REDIS__CLUSTER=1" in str(out)


def test_one_redis_read_as_a_cluster_says_so() -> None:
    exc = RedisClusterException(
        "Redis Cluster cannot be connected. Please provide at least one reachable node: "
        "Cluster mode is not enabled on this node"
    )
    out = classify_redis_error(exc, "read")
    assert not isinstance(out, StoreUnavailable) and "no cluster node" in str(out)


def test_an_unreachable_cluster_or_server_is_waited_for() -> None:
    unreachable = RedisClusterException("Redis Cluster cannot be connected. Please provide ...")
    assert isinstance(classify_redis_error(unreachable, "read"), StoreUnavailable)
    assert isinstance(
        classify_redis_error(RedisConnectionError("refused"), "read"), StoreUnavailable
    )
    wrongpass = BaseParser.parse_error("WRONGPASS invalid username-password pair")
    assert "credentials" in str(classify_redis_error(wrongpass, "read"))


def test_by_slot_groups_like_redis_hashes() -> None:
    rng = random.Random(3)
    keys = [f"streamer:m:{rng.random()}".encode() for _ in range(2000)]
    keys += [b"streamer:m:{tag}a", b"streamer:m:{tag}b", b"streamer:m:{}x", b"streamer:m:{a"]
    groups = _by_slot(keys)
    assert sorted(i for _, idx in groups for i in idx) == list(range(len(keys)))
    for slot, idx in groups:
        assert {key_slot(keys[i]) for i in idx} == {slot}
    assert len({slot for slot, _ in groups}) == len(groups)
    assert any(idx == [2000, 2001] for _, idx in groups)  # one hash tag, one slot
