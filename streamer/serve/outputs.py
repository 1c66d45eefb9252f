"""A batch's predictions as columns (:class:`Outputs`), and out as JSON bytes
(:func:`encode_outputs`): the JSON of :meth:`~streamer.schemas.Prediction.to_json`, byte for byte,
written from the columns, with every float formatted in one ``orjson`` call per batch.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import orjson

from streamer.model import ModelSpec, intervals
from streamer.schemas import Prediction, float32_values
from streamer.serve.columns import EventColumns

__all__ = ["OutputShape", "Outputs", "encode_outputs", "next_parts"]

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
