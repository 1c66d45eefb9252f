"""A batch as columns: raw messages in, :class:`EventColumns` out; predictions out as JSON bytes.

No Kafka client here. A batch of messages becomes a few arrays (entity index, partition, offset,
y, features) and two lists (the distinct entity ids, each event's ``ds``), in batch order. Each
message takes one short fast path (:func:`decode_columns`); a message it does not plainly accept
takes the full checks of :func:`streamer.schemas.decode_event`, which give the dead-letter reasons.

Predictions go out the other way (:func:`encode_outputs`): the JSON of :meth:`Prediction.to_json`,
byte for byte, written from the columns, with every float formatted in one ``orjson`` call per
batch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt
import orjson
from msgspec.structs import astuple

from streamer.model import ModelSpec, intervals
from streamer.schemas import (
    MAX_ABS_VALUE,
    MAX_CATEGORY_CHARS,
    DeadLetter,
    Event,
    Message,
    Prediction,
    decode_event,
    float32_values,
)

__all__ = ["EventColumns", "OutputShape", "Outputs", "decode_columns", "encode_outputs"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
_EMPTY_I = np.zeros(0, np.int64)


@dataclass(frozen=True)
class OutputShape:
    """What a prediction's values are: a classifier's probabilities of ``classes``, or a
    forecast, with the times of its steps when the series' frequency ``freq`` is known and the
    bounds of its intervals at ``levels`` after it (see :func:`streamer.model.intervals.split`)."""

    classes: tuple[str, ...] = ()
    freq: str | None = None
    levels: tuple[int, ...] = ()
    #: a next-event model's vocabulary of the predicted column (its ids 1.. are these values):
    #: its predictions are that many ids, their probabilities, a surprise and a rank
    vocabulary: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: ModelSpec) -> OutputShape:
        if spec.task == "next":
            return cls(vocabulary=spec.vocabularies[spec.categorical.index(spec.next or "")])
        return cls(spec.classes, spec.freq, spec.levels)


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
    index: dict[str, int] = {}
    intern = index.setdefault
    entity = np.fromiter([intern(e.unique_id, len(index)) for e in good], np.int64, n)
    if nf:  # (a struct's features follow its three fields; an Event has them as a tuple)
        feats = [e.features if type(e) is Event else astuple(e)[3:] for e in good]
    return (
        EventColumns(
            entities=list(index),
            entity=entity,
            partition=np.fromiter([messages[i].partition for i in source], np.int64, n),
            offset=np.fromiter([messages[i].offset for i in source], np.int64, n),
            y=np.fromiter([e.y for e in good], np.float64, n),
            features=np.asarray(feats, np.float64).reshape(n, nf) if nf else np.zeros((n, 0)),
            ds=[e.ds for e in good],
            source=np.asarray(source, np.int64),
        ),
        dead,
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
    index: dict[str, int] = {}
    intern = index.setdefault
    entity = np.fromiter([intern(u, len(index)) for u in columns[0]], np.int64, n)
    return (
        EventColumns(
            entities=list(index),
            entity=entity,
            partition=np.fromiter([messages[i].partition for i in source], np.int64, n),
            offset=np.fromiter([messages[i].offset for i in source], np.int64, n),
            y=y,
            features=np.asarray(columns[2 : 2 + nf], np.float64).T.reshape(n, nf)
            if nf
            else np.zeros((n, 0)),
            ds=list(columns[1]),
            source=np.asarray(source, np.int64),
            categories=tuple(list(c) for c in columns[2 + nf :]),
        ),
        dead,
    )


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


@dataclass
class Outputs:
    """Predictions of one batch as columns: ``row`` is the event each answers (a row of the
    batch's :class:`EventColumns`), in increasing order."""

    row: I64  # (M,)
    step: I64  # (M,)
    values: F64  # (M, K): forecasts, or class probabilities
    #: model version of each prediction (a fresh one: the batch's model; a re-emitted one: the
    #: version that made it), ASCII
    version: list[str]
    #: a window model's window length per prediction (0: a step model's prediction)
    window: I64  # (M,)

    def __len__(self) -> int:
        return len(self.row)

    def _next_predictions(
        self, events: EventColumns, vocabulary: tuple[str, ...]
    ) -> list[Prediction]:
        ids, probs, surprise, rank = next_parts(self.values)
        names = events.entities
        return [
            Prediction(
                names[int(events.entity[r])],
                events.ds[r],
                float(events.y[r]),
                int(events.partition[r]),
                int(events.offset[r]),
                v,
                s,
                tuple(p),
                next=tuple(vocabulary[i - 1] for i in row),
                surprise=None if u != u else u,
                rank=None if k != k else int(k),
            )
            for r, s, v, row, p, u, k in zip(
                self.row.tolist(),
                self.step.tolist(),
                self.version,
                ids.tolist(),
                probs.tolist(),
                surprise.tolist(),
                rank.tolist(),
                strict=True,
            )
        ]

    @classmethod
    def empty(cls, k: int = 0) -> Outputs:
        return cls(_EMPTY_I, _EMPTY_I, np.zeros((0, k)), [], _EMPTY_I)

    @classmethod
    def join(cls, parts: Iterable[Outputs]) -> Outputs:
        """One table of several (each in row order, rows of the same batch), in row order."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        row = np.concatenate([p.row for p in parts])
        order = np.argsort(row, kind="stable")
        version = [v for p in parts for v in p.version]
        return cls(
            row=row[order],
            step=np.concatenate([p.step for p in parts])[order],
            values=np.concatenate([p.values for p in parts])[order],
            version=[version[i] for i in order.tolist()],
            window=np.concatenate([p.window for p in parts])[order],
        )

    def where(self, keep: npt.NDArray[np.bool_]) -> Outputs:
        """The outputs where ``keep`` is true."""
        return Outputs(
            self.row[keep],
            self.step[keep],
            self.values[keep],
            [v for v, k in zip(self.version, keep.tolist(), strict=True) if k],
            self.window[keep],
        )

    def remap(self, rows: I64) -> Outputs:
        """The same outputs with their rows mapped through ``rows`` (a sub-batch's rows back to
        the batch it was taken from)."""
        return Outputs(rows[self.row], self.step, self.values, self.version, self.window)

    def predictions(
        self, events: EventColumns, shape: OutputShape = OutputShape()
    ) -> list[Prediction]:
        """One :class:`Prediction` per row (tests, the Python API; not the hot path)."""
        classes, freq, levels = shape.classes, shape.freq, shape.levels
        names = events.entities
        if shape.vocabulary:
            return self._next_predictions(events, shape.vocabulary)
        ent, part, off, y = (
            events.entity.tolist(),
            events.partition.tolist(),
            events.offset.tolist(),
            events.y.tolist(),
        )
        k = self.values.shape[1] // (1 + 2 * len(levels))
        forecast, lows, highs = intervals.split(self.values, k, len(levels))
        times: list[tuple[str, ...]] = [()] * len(self.row)
        if freq is not None and not classes and k:
            from streamer.serve.times import forecast_times

            stamps = forecast_times([events.ds[r] for r in self.row.tolist()], freq, k)
            times = [tuple(orjson.loads(t)) for t in stamps]
        bounds: list[dict[int, tuple[tuple[float, ...], tuple[float, ...]]]] = [
            {v: (tuple(lo[i]), tuple(hi[i])) for i, v in enumerate(levels)}
            for lo, hi in zip(lows.tolist(), highs.tolist(), strict=True)
        ]
        return [
            Prediction(
                names[ent[r]], events.ds[r], y[r], part[r], off[r], v, s, tuple(f), classes, w, t, b
            )
            for r, s, f, v, w, t, b in zip(
                self.row.tolist(),
                self.step.tolist(),
                forecast.tolist(),
                self.version,
                self.window.tolist(),
                times,
                bounds,
                strict=True,
            )
        ]


def _floats(a: F64) -> list[bytes]:
    """Each value's JSON, as ``orjson`` writes a Python float (one call for all of them).

    >>> _floats(np.array([3.0, 0.1, 1e22]))
    [b'3.0', b'0.1', b'1e+22']
    """
    if not len(a):
        return []
    return orjson.dumps(np.ascontiguousarray(a, np.float64), option=orjson.OPT_SERIALIZE_NUMPY)[
        1:-1
    ].split(b",")


def _rows(a: F64) -> list[bytes]:
    """Each row's JSON array of floats, ``[..]``, from one ``orjson`` call, at the model's
    float32 precision (the shortest text that reads back as the same float32, not 17 digits).

    >>> _rows(np.array([[1.0, 2.5], [0.1, -3.0], [1234.56789, 1e-3]]))
    [b'[1.0,2.5]', b'[0.1,-3.0]', b'[1234.5679,0.001]']
    """
    if not len(a):
        return []
    if a.shape[1] == 0:
        return [b"[]"] * len(a)
    text = orjson.dumps(float32_values(a), option=orjson.OPT_SERIALIZE_NUMPY)
    return [b"[" + r + b"]" for r in text[2:-2].split(b"],[")]


def next_parts(values: F64) -> tuple[I64, F64, F64, F64]:
    """A next-event model's served values ``(M, 2k + 2)`` as the ids of its top values ``(M,
    k)``, their probabilities ``(M, k)``, the surprises and the ranks ``(M,)`` (NaN: none)."""
    k = (values.shape[1] - 2) // 2
    return values[:, :k].astype(np.int64), values[:, k : 2 * k], values[:, -2], values[:, -1]


@functools.lru_cache(maxsize=8)
def _names_json(vocabulary: tuple[str, ...]) -> npt.NDArray[np.object_]:
    """Each value's JSON string, by id - 1 (once per vocabulary: a batch names thousands)."""
    out = np.empty(len(vocabulary), dtype=object)
    out[:] = [orjson.dumps(v) for v in vocabulary]
    return out


def _next_bodies(values: F64, vocabulary: tuple[str, ...]) -> list[bytes]:
    """Each next-event prediction's fields after ``step``, as :meth:`Prediction.to_json` has
    them: the values' names, their probabilities, the surprise and the rank (null: none)."""
    ids, probs, surprise, rank = next_parts(values)
    names = _names_json(vocabulary)[ids - 1].tolist()
    texts = _floats(surprise)
    ranks = [b"null" if r != r else b"%d" % r for r in rank.tolist()]
    return [
        b'"next":[%s],"probabilities":%s,"surprise":%s,"rank":%s' % (b",".join(row), p, t, r)
        for row, p, t, r in zip(names, _rows(probs), texts, ranks, strict=True)
    ]


#: A prediction's JSON, as :meth:`Prediction.to_json` writes it; its body is the forecast, or the
#: probabilities and the label
_ANY = (
    b'{"unique_id":%s,"ds":%s,"y":%s,"partition":%d,"offset":%d,"model_version":%s,"step":%d,%s%s}'
)
_TEMPLATE = (
    b'{"unique_id":%s,"ds":%s,"y":%s,"partition":%d,"offset":%d,"model_version":%(version),'
    b'"step":%d,%s}'
)


def encode_outputs(
    events: EventColumns, out: Outputs, shape: OutputShape = OutputShape()
) -> tuple[list[bytes], list[bytes]]:
    """The message key (the entity id) and value (:meth:`Prediction.to_json`'s bytes) of each
    prediction, in the order of ``out``, as ``shape`` says its values are."""
    classes, freq, levels = shape.classes, shape.freq, shape.levels
    rows = out.row
    if not len(rows):
        return [], []
    dumps = orjson.dumps
    ent = events.entity[rows].tolist()
    names = events.entities
    # each distinct entity's key and JSON string once, each distinct time's JSON once
    keys_of = [n.encode() for n in names]
    ids_of = [dumps(n) for n in names]
    ds = events.ds
    picked = [ds[r] for r in rows.tolist()]
    times = {d: dumps(d) for d in set(picked)}
    ds_json = [times[d] for d in picked]
    ys = _floats(events.y[rows])
    part, off, step = (
        events.partition[rows].tolist(),
        events.offset[rows].tolist(),
        out.step.tolist(),
    )
    versions = {v: dumps(v) for v in set(out.version)}
    one = len(versions) == 1 and not out.window.any()
    if shape.vocabulary:
        body = _next_bodies(out.values, shape.vocabulary)
    elif classes:
        labels = [dumps(classes[a]) for a in np.argmax(out.values, axis=1).tolist()]
        names_json = [dumps(c) + b":" for c in classes]
        body = [
            b'"probabilities":{%s},"label":%s'
            % (b",".join(n + v for n, v in zip(names_json, row[1:-1].split(b","), strict=True)), lb)
            for row, lb in zip(_rows(out.values), labels, strict=True)
        ]
    else:
        k = out.values.shape[1] // (1 + 2 * len(levels))
        forecast, lows, highs = intervals.split(out.values, k, len(levels))
        body = [b'"forecast":' + f for f in _rows(forecast)]
        if freq is not None and k:
            from streamer.serve.times import forecast_times

            stamps = forecast_times(picked, freq, k)
            body = [
                b + b',"forecast_ds":' + t if t != b"[]" else b
                for b, t in zip(body, stamps, strict=True)
            ]
        if levels:
            n = len(rows)
            texts = _rows(np.concatenate([lows, highs], 1).reshape(n * 2 * len(levels), k))
            heads = [b'"%d":{"lo":' % v for v in levels]
            per = 2 * len(levels)
            body = [
                b
                + b',"intervals":{'
                + b",".join(
                    heads[i]
                    + texts[j * per + i]
                    + b',"hi":'
                    + texts[j * per + len(levels) + i]
                    + b"}"
                    for i in range(len(levels))
                )
                + b"}"
                for j, b in enumerate(body)
            ]
    if one:  # the usual batch: one model version, no windows: both go in the template
        (only,) = versions.values()
        template = _TEMPLATE.replace(b"%(version)", only.replace(b"%", b"%%"))
        values = [
            template % (ids_of[e], d, y, p, o, s, f)
            for e, d, y, p, o, s, f in zip(ent, ds_json, ys, part, off, step, body, strict=True)
        ]
    else:
        ver = [versions[v] for v in out.version]
        windows = [b',"window":%d' % w if w else b"" for w in out.window.tolist()]
        values = [
            _ANY % (ids_of[e], d, y, p, o, v, s, f, w)
            for e, d, y, p, o, v, s, f, w in zip(
                ent, ds_json, ys, part, off, ver, step, body, windows, strict=True
            )
        ]
    return [keys_of[e] for e in ent], values
