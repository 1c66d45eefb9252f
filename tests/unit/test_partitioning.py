from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner, murmur2
from hypothesis import given
from hypothesis import strategies as st

from streamer.kafka.partitioning import murmur2_many, partitions_of


@given(st.lists(st.binary(max_size=40), max_size=60))
def test_murmur2_equals_kafkas_for_any_keys(keys: list[bytes]) -> None:
    assert murmur2_many(keys).tolist() == [murmur2(k) & 0xFFFFFFFF for k in keys]


@given(
    st.lists(st.text(min_size=1, max_size=30).map(str.encode), max_size=60),
    st.integers(1, 200),
)
def test_partitions_equal_the_default_partitioners(keys: list[bytes], n: int) -> None:
    expected = [DefaultPartitioner()(k, list(range(n)), []) for k in keys]
    assert partitions_of(keys, n).tolist() == expected
