"""Events in, predictions and dead letters out.

An event is a JSON object on the input topic, keyed by its entity id::

    {"unique_id": "store-7", "ds": "2024-03-01", "y": 12.5, "temp": 3.1}

``unique_id`` (non-empty text, equal to the message key), ``ds`` (the event's time, text), ``y`` (the
observed value, a finite number) and exactly the model's feature columns (finite numbers). Anything
else is bad input: :func:`decode_event` returns a :class:`DeadLetter` with a machine-readable reason
instead of raising, and the worker sends it to the dead-letter topic with the original bytes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeGuard

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamer.strict_json import magnitude, parse

__all__ = [
    "DeadLetter",
    "Event",
    "EventBody",
    "Message",
    "Prediction",
    "Reason",
    "decode_event",
]

log = logging.getLogger(__name__)

#: Why an event was dead-lettered. Stable strings: consumers of the DLQ may switch on them.
Reason = Literal[
    "too_large",
    "invalid_json",
    "not_an_object",
    "empty_key",
    "key_mismatch",
    "missing_field",
    "wrong_type",
    "non_finite",
    "out_of_range",
    "wrong_feature_count",
    "duplicate_field",
    "not_a_time",
    "partition_conflict",
    "contended",
]

#: Largest magnitude accepted for ``y`` and features. Larger finite values would overflow the
#: running statistics or float32 inputs and leave an entity's state NaN for good.
MAX_ABS_VALUE = 1e30
#: The longest value of a categorical column, in characters.
MAX_CATEGORY_CHARS = 1024


class EventBody(BaseModel):
    """The JSON schema of an event; feature columns are the extra fields."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    unique_id: str = Field(min_length=1, max_length=512)
    ds: str = Field(min_length=1, max_length=64)
    y: float = Field(allow_inf_nan=False)


# Event and Prediction are made for every message: plain slotted dataclasses, since a frozen one
# pays an ``object.__setattr__`` call per field in ``__init__``. Treat them as values.


@dataclass(slots=True)
class Event:
    """A valid event and where it came from: the unit the predictor steps."""

    unique_id: str
    ds: str
    y: float
    features: tuple[float, ...]
    partition: int
    offset: int
    #: the values of a model's categorical columns, in its order (None: null, out of vocabulary)
    categories: tuple[str | None, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A bad event: its original bytes and why it was refused."""

    key: bytes | None
    value: bytes | None
    reason: Reason
    detail: str
    partition: int
    offset: int

    def headers(self, source_topic: str) -> dict[str, bytes]:
        return {
            "streamer-reason": self.reason.encode(),
            "streamer-detail": self.detail[:1000].encode(),
            "streamer-source": f"{source_topic}/{self.partition}/{self.offset}".encode(),
        }


@dataclass(slots=True)
class Prediction:
    """The model's output for one event, after the state it came from was saved.

    ``values`` is the forecast (the next K values) of a forecaster, or the class probabilities of
    a classifier (then ``classes`` names them). A window model's prediction answers the event that
    closed a window of ``window`` events; a step model's has ``window`` 0. A forecaster calibrated
    with intervals gives each level's bounds: ``intervals[80] == (lows, highs)``, K values each.
    """

    unique_id: str
    ds: str
    y: float
    partition: int
    offset: int
    model_version: str
    step: int
    values: tuple[float, ...]
    classes: tuple[str, ...] = ()
    window: int = 0
    #: The times the forecast's steps fall on, when the model knows the series' frequency.
    forecast_ds: tuple[str, ...] = ()
    #: Prediction intervals by level (percent): the lows and the highs of the forecast's steps.
    intervals: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = field(default_factory=dict)
    #: A next-event model's: the most likely values of the entity's next event (``values`` are
    #: their probabilities), and this event's surprise under the prediction before it, ``-ln p``
    #: (None: there was none), and its rank there (1: the most likely; None: not among the
    #: values that prediction named, or there was none).
    next: tuple[str, ...] = ()
    surprise: float | None = None
    rank: int | None = None

    @classmethod
    def of(
        cls,
        ev: Event,
        model_version: str,
        step: int,
        values: Sequence[float],
        classes: tuple[str, ...] = (),
        window: int = 0,
    ) -> Prediction:
        """The prediction answering event ``ev``: its identity, time and value, and the output."""
        return cls(
            ev.unique_id,
            ev.ds,
            ev.y,
            ev.partition,
            ev.offset,
            model_version,
            step,
            tuple(values),
            classes,
            window,
        )

    @property
    def forecast(self) -> tuple[float, ...]:
        return self.values

    @property
    def served(self) -> tuple[float, ...]:
        """The values as the predictor serves them: the forecast, then each level's lows and
        highs (the layout of :mod:`streamer.model.intervals`)."""
        return self.values + tuple(v for lo, hi in self.intervals.values() for v in lo + hi)

    @property
    def label(self) -> str | None:
        """The most probable class of a classifier's prediction."""
        if not self.classes:
            return None
        return self.classes[max(range(len(self.values)), key=self.values.__getitem__)]

    def to_json(self) -> bytes:
        d: dict[str, Any] = {  # a dict: orjson writes it 4x faster than the dataclass
            "unique_id": self.unique_id,
            "ds": self.ds,
            "y": self.y,
            "partition": self.partition,
            "offset": self.offset,
            "model_version": self.model_version,
            "step": self.step,
        }
        values = _float32_json(self.values)
        if self.next:
            d["next"] = self.next
            d["probabilities"] = orjson.Fragment(values)
            d["surprise"] = self.surprise
            d["rank"] = self.rank
        elif self.classes:
            d["probabilities"] = orjson.Fragment(
                b"{%s}"
                % b",".join(
                    orjson.dumps(c) + b":" + v
                    for c, v in zip(self.classes, values[1:-1].split(b","), strict=True)
                )
            )
            d["label"] = self.label
        else:
            d["forecast"] = orjson.Fragment(values)
            if self.forecast_ds:
                d["forecast_ds"] = self.forecast_ds
            if self.intervals:
                d["intervals"] = orjson.Fragment(
                    b"{%s}"
                    % b",".join(
                        b'"%d":{"lo":%s,"hi":%s}' % (level, _float32_json(lo), _float32_json(hi))
                        for level, (lo, hi) in self.intervals.items()
                    )
                )
        if self.window:
            d["window"] = self.window
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes) -> Prediction:
        d = orjson.loads(raw)
        probs = d.get("probabilities")
        if "next" in d:
            return cls(
                **{k: d[k] for k in ("unique_id", "ds", "partition", "offset", "step")},
                y=math.nan if d["y"] is None else d["y"],
                model_version=d["model_version"],
                values=tuple(probs),
                next=tuple(d["next"]),
                surprise=d["surprise"],
                rank=d["rank"],
            )
        return cls(
            unique_id=d["unique_id"],
            ds=d["ds"],
            y=d["y"],
            partition=d["partition"],
            offset=d["offset"],
            model_version=d["model_version"],
            step=d["step"],
            values=tuple(probs.values() if probs is not None else d["forecast"]),
            classes=tuple(probs) if probs is not None else (),
            window=d.get("window", 0),
            forecast_ds=tuple(d.get("forecast_ds", ())),
            intervals={
                int(level): (tuple(b["lo"]), tuple(b["hi"]))
                for level, b in d.get("intervals", {}).items()
            },
        )


def _float32_json(values: Sequence[float]) -> bytes:
    """A JSON array of the values at float32 precision, the model's: the shortest text that
    reads back as the same float32.

    >>> _float32_json((0.1, 1234.56789, 3.0))
    b'[0.1,1234.5679,3.0]'
    """
    return orjson.dumps(float32_values(values), option=orjson.OPT_SERIALIZE_NUMPY)


_F32_MAX = float(np.finfo(np.float32).max)


def float32_values(values: Any) -> npt.NDArray[np.float32]:
    """The values as float32, the model's precision (a value beyond float32's range, which no
    model output reaches, saturates at its largest finite value)."""
    a = np.asarray(values, np.float64)
    return np.ascontiguousarray(np.clip(a, -_F32_MAX, _F32_MAX), np.float32)


_PYDANTIC_REASONS: dict[str, Reason] = {
    "missing": "missing_field",
    "finite_number": "non_finite",
}


def _reason_of(err: ValidationError) -> tuple[Reason, str]:
    first = err.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "event"
    reason = _PYDANTIC_REASONS.get(first["type"], "wrong_type")
    return reason, f"{where}: {first['msg']}"


def decode_event(
    key: bytes | None,
    value: bytes | None,
    partition: int,
    offset: int,
    features: Sequence[str] = (),
    max_bytes: int = 64 * 1024,
    categorical: Sequence[str] = (),
    target: bool = True,
) -> Event | DeadLetter:
    """Validate one raw message. Never raises on bad input: returns a :class:`DeadLetter`.

    ``categorical`` columns hold text (at most :data:`MAX_CATEGORY_CHARS` characters) or null;
    without ``target`` (a next-event model's events) ``y`` may be left out (it is then NaN), and
    is checked like any number when given.

    >>> decode_event(b"a", b'{"unique_id": "a", "ds": "2024-01", "y": 1}', 0, 5)
    Event(unique_id='a', ds='2024-01', y=1.0, features=(), partition=0, offset=5, categories=())
    >>> decode_event(b"a", b'{"unique_id": "a", "ds": "2024-01", "y": NaN}', 0, 6).reason
    'non_finite'
    """

    if not categorical and target:
        fast = _plain(key, value, features, partition, offset, max_bytes)
        if fast is not None:
            return fast
    return _decode_checked(key, value, partition, offset, features, max_bytes, categorical, target)


class Message(Protocol):
    """A message as the consumer gives it (an aiokafka ``ConsumerRecord`` is one)."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


def _is_number(v: object) -> TypeGuard[float]:
    """A finite int or float within the accepted range (never a bool, NaN or infinity)."""
    return (type(v) is float or type(v) is int) and -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE


def _plain(
    key: bytes | None,
    value: bytes | None,
    features: Sequence[str],
    partition: int,
    offset: int,
    max_bytes: int,
) -> Event | None:
    """The event, when it is plainly valid; ``None`` sends it through the full checks.

    The hot path (:func:`streamer.serve.columns.decode_columns` inlines the same rules): a flat
    object with exactly the fields and no backslash escapes, whose quotes are those of its keys
    and of two text values, so that no field is given twice (JSON parsers keep the last of a
    duplicated key without a word). It accepts a subset of what :func:`_decode_checked` accepts,
    with the same result (a property test holds them equal).
    """
    if (
        value is None
        or len(value) > max_bytes
        or b"\\" in value
        or value.count(b'"') != 2 * len(features) + 10
    ):
        return None
    try:
        data: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or len(data) != 3 + len(features):
        return None
    uid, ds, y = data.get("unique_id"), data.get("ds"), data.get("y")
    if (
        type(uid) is not str
        or not 0 < len(uid) <= 512
        or type(ds) is not str
        or not 0 < len(ds) <= 64
        or not _is_number(y)
        or key != uid.encode()
    ):
        return None
    values = []
    for name in features:
        v = data.get(name)
        if not _is_number(v) or name in _FIELDS:
            return None
        values.append(float(v))
    return Event(uid, ds, float(y), tuple(values), partition, offset)


_FIELDS = frozenset(("unique_id", "ds", "y"))


def _decode_checked(
    key: bytes | None,
    value: bytes | None,
    partition: int,
    offset: int,
    features: Sequence[str],
    max_bytes: int,
    categorical: Sequence[str] = (),
    target: bool = True,
) -> Event | DeadLetter:
    """Every check, with the reason of the first that fails."""

    def dead(reason: Reason, detail: str) -> DeadLetter:
        return DeadLetter(key, value, reason, detail, partition, offset)

    if value is None:
        return dead("invalid_json", "empty message (tombstone)")
    if len(value) > max_bytes:
        return dead("too_large", f"{len(value)} bytes, limit {max_bytes}")
    parsed = parse(value)
    if isinstance(parsed, str):
        return dead("invalid_json", parsed)
    data, duplicated = parsed
    if not isinstance(data, dict):
        return dead("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    untargeted = not target and "y" not in data
    try:
        body = EventBody.model_validate({**data, "y": 0.0} if untargeted else data)
    except ValidationError as exc:
        return dead(*_reason_of(exc))
    if duplicated:
        return dead("duplicate_field", f"fields given more than once: {duplicated[:10]}")
    if not key:
        return dead("empty_key", "the message key must be the entity id")
    if key != body.unique_id.encode():
        return dead("key_mismatch", f"key {key[:100]!r} != unique_id {body.unique_id[:100]!r}")
    extra = dict(body.model_extra or {})
    categories: list[str | None] = []
    for name in categorical:
        if name not in extra:
            return dead("missing_field", f"{name}: the categorical column is missing")
        v = extra.pop(name)
        if v is not None and not isinstance(v, str):
            return dead("wrong_type", f"{name}: expected text or null, got {type(v).__name__}")
        if v is not None and len(v) > MAX_CATEGORY_CHARS:
            return dead("out_of_range", f"{name}: {len(v):,} characters > {MAX_CATEGORY_CHARS:,}")
        categories.append(v)
    if len(extra) != len(features) or any(f not in extra for f in features):
        return dead(
            "wrong_feature_count",
            f"expected features {sorted(features)}, got {sorted(extra)[:50]}",
        )
    if abs(body.y) > MAX_ABS_VALUE:
        return dead("out_of_range", f"y: {magnitude(body.y)} > {MAX_ABS_VALUE:g}")
    values: list[float] = []
    for name in features:
        v = extra[name]
        if isinstance(v, bool) or not isinstance(v, int | float):
            return dead("wrong_type", f"{name}: expected a number, got {type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            return dead("non_finite", f"{name}: {v}")
        if abs(v) > MAX_ABS_VALUE:
            return dead("out_of_range", f"{name}: {magnitude(v)} > {MAX_ABS_VALUE:g}")
        values.append(float(v))
    y = math.nan if untargeted else body.y
    return Event(body.unique_id, body.ds, y, tuple(values), partition, offset, tuple(categories))
