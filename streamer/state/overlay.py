"""Writes on their way: the records a worker stepped and is still saving, read before the store.

A worker steps a batch while the batch before it is saved (:mod:`streamer.serve.chain`), so it
reads the states of that batch here, before its cache and the store, and with them the predictions
that batch keeps for re-emission (a replay of its events in flight re-emits them from here). Once
the store answers, a record it took leaves (unless a later batch already stepped on from it) and a
record it refused leaves with whatever was stepped on from it; every refusal is counted, and a batch
that read a record here before a refusal is stale (:meth:`InFlight.stale`): it is stepped again
from the store before it is saved.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["InFlight"]


class InFlight:
    """The records and outbox entries of batches stepped and not yet saved, by batch."""

    def __init__(self) -> None:
        #: entity -> the newest record stepped for it and not confirmed yet
        self._records: dict[str, bytes] = {}
        #: batch -> partition -> outbox entries (:func:`streamer.state.batch.outbox_dtype`)
        self._entries: dict[int, dict[int, npt.NDArray[np.void]]] = {}
        self._batches = itertools.count()
        #: saves refused by the store so far
        self.refusals = 0

    def __len__(self) -> int:
        return len(self._records)

    def batch(self) -> int:
        """A new batch's number (what :meth:`hold` and the others know it by)."""
        return next(self._batches)

    def get_many(self, entities: Sequence[str]) -> list[bytes | None]:
        """The records on their way for these entities, None where none is."""
        held = self._records
        return list(map(held.get, entities)) if held else [None] * len(entities)

    def hold(
        self,
        batch: int,
        items: Sequence[tuple[str, bytes]],
        entries: dict[int, npt.NDArray[np.void]] | None = None,
    ) -> None:
        """A batch's records (and outbox entries) are on their way: later batches read them."""
        self._records.update(items)
        if entries:
            self._entries[batch] = entries

    def entries(self, partition: int) -> list[npt.NDArray[np.void]]:
        """The outbox entries of a partition that batches on their way hold."""
        return [held[partition] for held in self._entries.values() if partition in held]

    def saved(self, batch: int, items: Sequence[tuple[str, bytes]], saved: Sequence[bool]) -> None:
        """The store took (True) or refused each record of a batch."""
        self._entries.pop(batch, None)  # (the entries of records it took are in its outbox now)
        held = self._records
        for (e, blob), ok in zip(items, saved, strict=True):
            if not ok:  # whatever a later batch stepped on from it does not hold either
                held.pop(e, None)
            elif held.get(e) is blob:  # (a later batch may have stepped on from it)
                del held[e]
        if not all(saved):
            self.refusals += 1

    def abandon(self, batch: int, items: Sequence[tuple[str, bytes]]) -> None:
        """A batch will not be saved as it was stepped: later batches must not step on from it."""
        self._entries.pop(batch, None)
        held = self._records
        for e, blob in items:
            if held.get(e) is blob:
                del held[e]

    def stale(self, refusals: int) -> bool:
        """Whether a store refused a save since :attr:`refusals` was ``refusals``."""
        return refusals != self.refusals
