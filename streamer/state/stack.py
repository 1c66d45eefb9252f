"""A worker's states as columns: the writes on their way, then the cache, then the store.

The predictor reads and writes :class:`~streamer.state.batch.StateBatch` columns through a
:class:`StateStack`, never a record's bytes. The stack is a store that wraps stores:

- :meth:`StateStack.read`: the latest state of each entity of a batch, from the writes on their way
  (:class:`~streamer.state.overlay.InFlight`), then the cache (:class:`~streamer.state.cache.StateCache`,
  whose hits need no decoding), the rest in one round trip to the store; decoded as one batch, with
  what the store knows each record by (its base, for the compare-and-set);
- :meth:`StateStack.prefetch`: that round trip started early, for the entities no write on its way
  and no cache entry holds, while the batches before are still saved and delivered (the batch
  reads them when it may be stepped; what a refused save may have changed since is read again);
- :meth:`StateStack.stage`: the stepped states encoded once, and held in flight so that the next
  batch steps on from them while they are written;
- :meth:`StateStack.write`: one conditional round trip (with the batch's outbox parts); what the
  store took goes to the cache, what it refused leaves the cache and the writes on their way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streamer.state.batch import StateBatch, bases, decode_many, encode_rows, records
from streamer.state.cache import StateCache
from streamer.state.codec import Dtype, base_of
from streamer.state.overlay import InFlight
from streamer.state.store import OutboxPart, StateStore

__all__ = ["Layout", "Loaded", "Prefetch", "Staged", "StateStack"]

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Layout:
    """The shape of a model's states: ``tensors`` tensors (h, and c for an LSTM) of ``layers`` x
    ``hidden`` values stored as ``dtype``, and ``width`` values per kept output."""

    layers: int
    hidden: int
    width: int
    tensors: int = 2
    dtype: Dtype = "float32"
    #: float64 level and seasonal components per entity (0: none)
    components: int = 0


@dataclass
class Loaded:
    """The states of a batch's entities (:meth:`StateStack.read`)."""

    states: StateBatch
    #: entity index -> why its record could not be read as the layout's (it starts over)
    problems: dict[int, str]
    #: what the store knows each entity's record by (:func:`~streamer.state.codec.base_of`)
    bases: list[bytes]
    #: whether any state came from a write on its way
    overlaid: bool
    #: seconds of the store's round trip (None: none was needed)
    read_s: float | None = None


class Prefetch:
    """A batch's store read, started before the batch may be stepped (:meth:`StateStack.prefetch`).

    It asks the store for the entities that no write on its way and no cache entry held then: no
    batch of this worker writes those until the batch is stepped, but a save the store refuses
    is run again, and may write any of the entities it refused; so the records are used only if
    no save was refused since (:attr:`refusals`)."""

    def __init__(self, entities: list[str], refusals: int, store: StateStore):
        self.entities = entities
        self.refusals = refusals
        self._task: asyncio.Task[list[bytes | None]] | None = None
        if entities:
            self._task = asyncio.ensure_future(store.get_many(entities))
            self._task.add_done_callback(_retrieved)

    async def records(self) -> dict[str, bytes | None]:
        """The records read, by entity; none if the read failed (the batch reads them again)."""
        if self._task is None or self._task.cancelled():
            return {}
        try:
            got = await asyncio.shield(self._task)
        except Exception:  # (a store outage: the batch's own read waits and retries)
            return {}
        except asyncio.CancelledError:
            if self._task.cancelled():
                return {}
            raise  # (the caller was cancelled)
        return dict(zip(self.entities, got, strict=True))

    def cancel(self) -> None:
        """The batch will not be stepped (a failure before it was)."""
        if self._task is not None:
            self._task.cancel()


def _retrieved(task: asyncio.Task[object]) -> None:
    with contextlib.suppress(BaseException):  # (its failure is the batch's read's to handle)
        task.exception()


@dataclass
class Staged:
    """A batch's stepped states, encoded, until the store answers (:meth:`StateStack.stage`)."""

    #: the batch's number among those in flight
    batch: int
    #: (entity, record) per stepped entity, and the base each was stepped from
    items: list[tuple[str, bytes]] = field(default_factory=list)
    bases: list[bytes] = field(default_factory=list)
    #: the records as fixed parts and tails, and the partition of each one's events (the cache's)
    rows: npt.NDArray[np.void] = field(default_factory=lambda: np.zeros(0, "V1"))
    tails: list[bytes] | None = None
    partitions: I64 = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def entities(self) -> list[str]:
        return [e for e, _ in self.items]


class StateStack:
    """The states a worker reads and writes: writes on their way, its cache, its store."""

    def __init__(self, store: StateStore, cache: StateCache | None = None):
        self.store = store
        self.cache = cache
        self.in_flight = InFlight()

    def batch(self) -> int:
        """A new batch's number (see :class:`~streamer.state.overlay.InFlight`)."""
        return self.in_flight.batch()

    def prefetch(self, entities: Sequence[str]) -> Prefetch:
        """Start reading from the store the records of the entities no write on their way and
        no cache entry holds (see :class:`Prefetch`); :meth:`read` takes it."""
        raws = self.in_flight.get_many(entities)
        missed = [e for e, raw in zip(entities, raws, strict=True) if raw is None]
        if self.cache is not None and missed:
            missed = self.cache.absent(missed)
        return Prefetch(missed, self.in_flight.refusals, self.store)

    async def read(
        self, entities: Sequence[str], layout: Layout, prefetch: Prefetch | None = None
    ) -> Loaded:
        """The latest state of each entity, as columns (one store round trip at most; none
        for the records ``prefetch`` read, unless a save was refused since it started)."""
        raws = self.in_flight.get_many(entities)
        overlaid = len(raws) != raws.count(None)
        missed = [j for j, raw in enumerate(raws) if raw is None]
        at = None
        cached = None
        if self.cache is not None and missed:
            found = self.cache.get_many([entities[j] for j in missed])
            if len(found):
                at = np.asarray(missed, np.int64)[found.at]
                fixed = np.ones(len(at), bool)
                if found.tails is not None:  # records that keep outputs: whole bytes
                    whole = records(found.rows, found.tails)
                    for i, (j, tail) in enumerate(zip(at.tolist(), found.tails, strict=True)):
                        if tail:
                            raws[j], fixed[i] = whole[i], False
                at, cached = at[fixed], found.rows[fixed]
                gone = np.zeros(len(missed), bool)
                gone[found.at] = True
                missed = [j for j, hit in zip(missed, gone.tolist(), strict=True) if not hit]
        took = None
        if missed and prefetch is not None:
            started = time.perf_counter()
            early = await prefetch.records()
            took = time.perf_counter() - started
            if early and not self.in_flight.stale(prefetch.refusals):
                rest = []
                for j in missed:
                    e = entities[j]
                    if e in early:
                        raws[j] = early[e]
                    else:
                        rest.append(j)
                missed = rest
        if missed:
            started = time.perf_counter()
            got = await self.store.get_many([entities[j] for j in missed])
            took = (took or 0.0) + time.perf_counter() - started
            for j, raw in zip(missed, got, strict=True):
                raws[j] = raw
        states, problems = decode_many(
            raws,
            layout.layers,
            layout.hidden,
            layout.width,
            layout.dtype,
            layout.tensors,
            at,
            cached,
            layout.components,
        )
        known = [base_of(raw) for raw in raws]  # (b"" for no record, and for cache hits:)
        if at is not None and cached is not None:
            for j, base in zip(at.tolist(), bases(cached), strict=True):
                known[j] = base
        return Loaded(states, problems, known, overlaid, took)

    def stage(
        self,
        batch: int,
        entities: Sequence[str],
        stepped: I64,
        states: StateBatch,
        loaded: Loaded,
        dtype: Dtype,
        entries: dict[int, npt.NDArray[np.void]] | None = None,
        hold: bool = True,
    ) -> Staged:
        """Encode the stepped states (``states`` are those of ``entities[stepped]``); with
        ``hold``, the next batch reads them (and ``entries``, the batch's outbox entries) until
        the store answers."""
        rows, tails = encode_rows(states, dtype)
        blobs = records(rows, tails)
        at = stepped.tolist()
        staged = Staged(
            batch=batch,
            items=[(entities[j], b) for j, b in zip(at, blobs, strict=True)],
            bases=[loaded.bases[j] for j in at],
            rows=rows,
            tails=tails,
            partitions=states.partition,
        )
        if hold:
            self.in_flight.hold(batch, staged.items, entries)
        return staged

    async def write(self, staged: Staged, outbox: Sequence[OutboxPart] = ()) -> list[bool]:
        """Save the staged records in one conditional round trip; True where the store took one
        (safe to retry: a record already stored counts as saved)."""
        saved: list[bool] = []
        if staged.items:
            saved = await self.store.put_many(staged.items, staged.bases, outbox)
        self.in_flight.saved(staged.batch, staged.items, saved)
        if self.cache is not None and staged.items:
            took = np.asarray(saved, bool)
            names, rows, parts, tails = (
                staged.entities,
                staged.rows,
                staged.partitions,
                staged.tails,
            )
            if not took.all():
                names = [e for e, ok in zip(names, saved, strict=True) if ok]
                rows, parts = rows[took], parts[took]
                if tails is not None:
                    tails = [t for t, ok in zip(tails, saved, strict=True) if ok]
                self.cache.discard(
                    e for e, ok in zip(staged.entities, saved, strict=True) if not ok
                )
            self.cache.put_many(names, parts, rows, tails)
        return saved

    def abandon(self, staged: Staged) -> None:
        """A staged batch will not be written as it is: the next batch must not step on from it."""
        self.in_flight.abandon(staged.batch, staged.items)

    def stale(self, refusals: int) -> bool:
        """Whether the store refused a write since :attr:`InFlight.refusals` was ``refusals``."""
        return self.in_flight.stale(refusals)

    def forget_partitions(self, partitions: set[int]) -> int:
        """Drop the cached states of partitions this worker no longer owns."""
        return self.cache.drop_partitions(partitions) if self.cache is not None else 0

    async def aclose(self) -> None:
        await self.store.aclose()
