"""A batch as columns: raw messages in, :class:`EventColumns` out (predictions go out as JSON
bytes through :mod:`streamer.serve.outputs`).

No Kafka client here. A batch of messages becomes a few arrays (entity index, partition, offset,
y, features) and two lists (the distinct entity ids, each event's ``ds``), in batch order. Each
message takes one short fast path (:func:`decode_columns`); a message it does not plainly accept
takes the full checks of :func:`streamer.schemas.decode_event`, which give the dead-letter reasons.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt
from msgspec.structs import astuple

from streamer.schemas import (
    MAX_ABS_VALUE,
    MAX_CATEGORY_CHARS,
    DeadLetter,
    Event,
    Message,
    decode_event,
)

__all__ = ["EventColumns", "decode_columns"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
_EMPTY_I = np.zeros(0, np.int64)


@dataclass
class EventColumns:
    """Valid events of one batch, in batch order.

    ``entities`` holds each distinct entity id once (in order of first appearance) and
    ``entity`` the index into it of every event; ``source`` is each event's position among the
    batch's messages (dead letters and valid events share those positions).
    """

    entities: list[str]
    entity: I64  # (N,)
    partition: I64  # (N,)
    offset: I64  # (N,)
    y: F64  # (N,)
    features: F64  # (N, F)
    ds: list[str]  # (N,)
    source: I64  # (N,)
    #: each categorical column's values (N each; None: null), in the model's order
    categories: tuple[list[str | None], ...] = ()

    def __len__(self) -> int:
        return len(self.entity)

    @classmethod
    def empty(cls, n_features: int = 0) -> EventColumns:
        return cls(
            [], _EMPTY_I, _EMPTY_I, _EMPTY_I, np.zeros(0), np.zeros((0, n_features)), [], _EMPTY_I
        )

    @classmethod
    def of(cls, events: Sequence[Event]) -> EventColumns:
        """Columns of events made one by one (tests, the Python API)."""
        index: dict[str, int] = {}
        entity = np.fromiter(
            (index.setdefault(e.unique_id, len(index)) for e in events), np.int64, len(events)
        )
        n_features = len(events[0].features) if events else 0
        return cls(
            entities=list(index),
            entity=entity,
            partition=np.fromiter((e.partition for e in events), np.int64, len(events)),
            offset=np.fromiter((e.offset for e in events), np.int64, len(events)),
            y=np.fromiter((e.y for e in events), np.float64, len(events)),
            features=np.asarray([e.features for e in events], np.float64).reshape(
                len(events), n_features
            ),
            ds=[e.ds for e in events],
            source=np.arange(len(events), dtype=np.int64),
            categories=tuple(
                [e.categories[j] for e in events]
                for j in range(len(events[0].categories) if events else 0)
            ),
        )

    def take(self, rows: I64) -> EventColumns:
        """The events at ``rows`` (in that order), their entities numbered again."""
        distinct, entity = np.unique(self.entity[rows], return_inverse=True)
        names = self.entities
        return EventColumns(
            entities=[names[j] for j in distinct.tolist()],
            entity=entity.astype(np.int64),
            partition=self.partition[rows],
            offset=self.offset[rows],
            y=self.y[rows],
            features=self.features[rows],
            ds=[self.ds[i] for i in rows.tolist()],
            source=self.source[rows],
            categories=tuple([col[i] for i in rows.tolist()] for col in self.categories),
        )

    def events(self) -> list[Event]:
        """One :class:`Event` per row (tests, the Python API; not the hot path)."""
        names = self.entities
        cats = list(zip(*self.categories, strict=True)) if self.categories else [()] * len(self)
        return [
            Event(names[j], ds, y, tuple(f), p, o, tuple(c))
            for j, ds, y, f, p, o, c in zip(
                self.entity.tolist(),
                self.ds,
                self.y.tolist(),
                self.features.tolist(),
                self.partition.tolist(),
                self.offset.tolist(),
                cats,
                strict=True,
            )
        ]


def decode_columns(
    messages: Sequence[Message],
    features: Sequence[str] = (),
    max_bytes: int = 64 * 1024,
    categorical: Sequence[str] = (),
) -> tuple[EventColumns, list[DeadLetter]]:
    """Validate a batch: its valid events as columns, and its dead letters, both in batch order.

    With ``categorical`` columns (a next-event model's events: text or null, no ``y`` needed)
    see :func:`_decode_tokens`.

    The fast path takes a message whose value is a flat JSON object with exactly the fields, no
    backslash escapes, and as many quoted strings as its keys and two text values (so no field is
    given twice: a JSON parser keeps the last of a duplicated key silently), decoded and checked
    by one msgspec call (:func:`_plain_decoder`). Anything else takes the full checks
    (:func:`streamer.schemas.decode_event`), with the same result for what both accept (a
    property test holds them equal).
    """
    if categorical:
        return _decode_tokens(messages, features, max_bytes, tuple(categorical))
    nf = len(features)
    quotes = 2 * (3 + nf) + 4  # the keys' quotes and those of unique_id's and ds's values
    plain = _plain_decoder(tuple(features))
    fast = plain.decode if plain is not None else None
    rejected = msgspec.DecodeError  # (a ValidationError is one)
    good: list[Any] = []  # a decoded struct or an Event per valid message, in batch order
    source: list[int] = []
    dead: list[DeadLetter] = []
    for i, m in enumerate(messages):
        value = m.value
        if (
            fast is not None
            and value is not None
            and len(value) <= max_bytes
            and value.count(b'"') == quotes
            and b"\\" not in value
        ):
            try:
                e = fast(value)
            except rejected:
                e = None
            if e is not None and m.key == e.unique_id.encode():
                good.append(e)
                source.append(i)
                continue
        # the full checks, for their reason or for an event the fast path passed up
        got = decode_event(m.key, value, m.partition, m.offset, features, max_bytes)
        if isinstance(got, DeadLetter):
            dead.append(got)
            continue
        good.append(got)
        source.append(i)
    n = len(good)
    if nf:  # (a struct's features follow its three fields; an Event has them as a tuple)
        feats = [e.features if type(e) is Event else astuple(e)[3:] for e in good]
    cols = _columns(
        messages,
        source,
        [e.unique_id for e in good],
        np.fromiter([e.y for e in good], np.float64, n),
        np.asarray(feats, np.float64).reshape(n, nf) if nf else np.zeros((n, 0)),
        [e.ds for e in good],
    )
    return cols, dead


def _columns(
    messages: Sequence[Message],
    source: list[int],
    ids: Sequence[str],
    y: F64,
    features: F64,
    ds: list[str],
    categories: tuple[list[str | None], ...] = (),
) -> EventColumns:
    """The columns of the valid events, ``source`` their messages' places in the batch."""
    n = len(source)
    index: dict[str, int] = {}
    intern = index.setdefault
    entity = np.fromiter([intern(u, len(index)) for u in ids], np.int64, n)
    return EventColumns(
        entities=list(index),
        entity=entity,
        partition=np.fromiter([messages[i].partition for i in source], np.int64, n),
        offset=np.fromiter([messages[i].offset for i in source], np.int64, n),
        y=y,
        features=features,
        ds=ds,
        source=np.asarray(source, np.int64),
        categories=categories,
    )


def _decode_tokens(
    messages: Sequence[Message],
    features: Sequence[str],
    max_bytes: int,
    categorical: tuple[str, ...],
) -> tuple[EventColumns, list[DeadLetter]]:
    """:func:`decode_columns` for events with categorical columns and without ``y`` (NaN).

    The fast path is the same as for numbers, with the categorical columns' text (or null) in
    the struct; the quotes are counted again once the nulls are known, so that a duplicated
    field still takes the full checks."""
    nf, nc = len(features), len(categorical)
    quotes = 2 * (2 + nf + nc) + 4 + 2 * nc  # keys, unique_id's and ds's values, the texts
    plain = _plain_decoder(tuple(features), categorical)
    fast = plain.decode if plain is not None else None
    rejected = msgspec.DecodeError
    rows: list[tuple[Any, ...]] = []  # (unique_id, ds, *features, *categories) per valid event
    source: list[int] = []
    dead: list[DeadLetter] = []
    given: dict[int, float] = {}  # a y that an event the full checks took gave (unused, kept)
    for i, m in enumerate(messages):
        value = m.value
        if fast is not None and value is not None and len(value) <= max_bytes:
            n_quotes = value.count(b'"')
            if n_quotes <= quotes and b"\\" not in value:
                try:
                    row = astuple(fast(value))
                except rejected:
                    row = None
                if (
                    row is not None
                    and n_quotes == quotes - 2 * row[2 + nf :].count(None)
                    and m.key == row[0].encode()
                ):
                    rows.append(row)
                    source.append(i)
                    continue
        got = decode_event(
            m.key, value, m.partition, m.offset, features, max_bytes, categorical, target=False
        )
        if isinstance(got, DeadLetter):
            dead.append(got)
            continue
        if got.y == got.y:
            given[len(rows)] = got.y
        rows.append((got.unique_id, got.ds, *got.features, *got.categories))
        source.append(i)
    n = len(rows)
    y = np.full(n, math.nan)
    if given:
        y[list(given)] = list(given.values())
    columns = list(zip(*rows, strict=True)) if rows else [()] * (2 + nf + nc)
    cols = _columns(
        messages,
        source,
        columns[0],
        y,
        np.asarray(columns[2 : 2 + nf], np.float64).T.reshape(n, nf) if nf else np.zeros((n, 0)),
        list(columns[1]),
        tuple(list(c) for c in columns[2 + nf :]),
    )
    return cols, dead


@functools.lru_cache(maxsize=16)
def _plain_decoder(
    features: tuple[str, ...], categorical: tuple[str, ...] = ()
) -> msgspec.json.Decoder[Any] | None:
    """A decoder of a plainly valid event with these features (None: names the fast path
    cannot take): an object with exactly the fields, the ids' lengths and the numbers' range
    as :func:`streamer.schemas.decode_event` checks them, numbers as floats (never a bool)."""
    names = (*features, *categorical)
    if len(set(names)) != len(names) or _FIELDS & set(names):
        return None
    number = Annotated[float, msgspec.Meta(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]
    text = Annotated[str, msgspec.Meta(max_length=MAX_CATEGORY_CHARS)] | None
    fields: list[tuple[str, Any]] = [
        ("unique_id", Annotated[str, msgspec.Meta(min_length=1, max_length=512)]),
        ("ds", Annotated[str, msgspec.Meta(min_length=1, max_length=64)]),
    ]
    if not categorical:  # (a next-event model's events need no y)
        fields.append(("y", number))
    fields += [(f"f{j}", number) for j in range(len(features))]
    fields += [(f"c{j}", text) for j in range(len(categorical))]
    rename = {f"f{j}": name for j, name in enumerate(features)}
    rename |= {f"c{j}": name for j, name in enumerate(categorical)}
    struct = msgspec.defstruct(
        "PlainEvent", fields, rename=rename, forbid_unknown_fields=True, gc=False
    )
    return msgspec.json.Decoder(struct)


_FIELDS = frozenset(("unique_id", "ds", "y"))
