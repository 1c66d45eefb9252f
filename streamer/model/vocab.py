"""Vocabularies of categorical columns: the values a model knows, learnt in training.

A categorical column's values (strings) become ids before the model sees them: id 0 is
out-of-vocabulary (a value training never saw, or too rare to keep), ids 1.. the kept values, most
frequent first. A vocabulary is stored in the model's spec, so serving maps values exactly as
training did. Ids travel inside the model's float32 input rows (exact below 2**24, far above any
vocabulary kept here) and the model embeds them (:class:`streamer.model.SequenceModel`).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from streamer.errors import ConfigError

__all__ = ["GROUPS_ABOVE", "MAX_VOCABULARY", "OOV", "Vocabulary", "groups_for"]

#: the id of a value the vocabulary does not hold
OOV = 0
#: the most values a vocabulary keeps (ids must stay exact in float32)
MAX_VOCABULARY = 1_000_000


#: Predicted columns of more ids than this get a two-level softmax by default.
GROUPS_ABOVE = 4096


def groups_for(ids: int) -> int:
    """The default groups of a two-level softmax over ``ids`` ids (out-of-vocabulary included):
    about the square root (the fewest logits per prediction: the groups', and one group's
    values), or 0, one softmax, up to :data:`GROUPS_ABOVE` ids.

    >>> groups_for(1_683), groups_for(10_001), groups_for(50_001)
    (0, 100, 224)
    """
    return 0 if ids <= GROUPS_ABOVE else round(ids**0.5)


class Vocabulary:
    """Values by id: ``values[i - 1]`` has id ``i``; anything else is :data:`OOV`.

    With ``buckets``, an open-ended column instead: any text's id is ``1 + CRC32(text) mod
    buckets`` (values that share a bucket share an embedding), and only a missing value (null,
    or no text) is :data:`OOV`."""

    def __init__(self, values: Sequence[str], buckets: int = 0):
        if len(values) > MAX_VOCABULARY or buckets > MAX_VOCABULARY:
            raise ConfigError(f"a vocabulary holds at most {MAX_VOCABULARY:,} values")
        if len(set(values)) != len(values):
            raise ConfigError("a vocabulary's values must be distinct")
        if buckets and values:
            raise ConfigError("a hashed column keeps no values")
        self.values: tuple[str, ...] = tuple(values)
        self.buckets = buckets
        self._ids = {v: i for i, v in enumerate(self.values, start=1)}

    def __len__(self) -> int:
        """Ids, out-of-vocabulary included."""
        return (self.buckets or len(self.values)) + 1

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and other.values == self.values
            and other.buckets == self.buckets
        )

    def __hash__(self) -> int:
        return hash((self.values, self.buckets))

    @classmethod
    def fit(cls, values: Iterable[str], max_size: int = 50_000, min_count: int = 1) -> Vocabulary:
        """The ``max_size`` most frequent values seen at least ``min_count`` times (ties in
        order of first appearance)."""
        if max_size < 1 or min_count < 1:
            raise ConfigError("a vocabulary keeps at least one value seen at least once")
        counts = Counter(values)
        kept = [v for v, n in counts.most_common(min(max_size, MAX_VOCABULARY)) if n >= min_count]
        return cls(kept)

    def ids(self, values: Iterable[object]) -> npt.NDArray[np.int64]:
        """Each value's id; a value that is no string, or one not held, is :data:`OOV`."""
        if self.buckets:
            n = self.buckets
            return np.fromiter(
                (
                    1 + zlib.crc32(v.encode("utf-8", "surrogatepass")) % n
                    if isinstance(v, str)
                    else OOV
                    for v in values
                ),
                np.int64,
            )
        get = self._ids.get
        return np.fromiter((get(v, OOV) if isinstance(v, str) else OOV for v in values), np.int64)

    def value(self, i: int) -> str | None:
        """The value of id ``i`` (None: out of vocabulary)."""
        return self.values[i - 1] if 0 < i <= len(self.values) else None
