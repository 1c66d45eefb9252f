"""Events in, predictions and dead letters out.

An event is a JSON object on the input topic, keyed by its entity id::

    {"unique_id": "store-7", "ds": "2024-03-01", "y": 12.5, "temp": 3.1}

``unique_id`` (non-empty text, equal to the message key), ``ds`` (the event's time, text), ``y`` (the
observed value, a finite number) and exactly the model's feature columns (finite numbers). Anything
else is bad input: :func:`decode_event` returns a :class:`DeadLetter` with a machine-readable reason
instead of raising, and the worker sends it to the dead-letter topic with the original bytes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeGuard

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "DeadLetter",
    "Event",
    "EventBody",
    "Message",
    "Prediction",
    "Reason",
    "decode_batch",
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
]

#: Largest magnitude accepted for ``y`` and features. Larger finite values would overflow the
#: running statistics or float32 inputs and leave an entity's state NaN for good.
MAX_ABS_VALUE = 1e30


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
    closed a window of ``window`` events; a step model's has ``window`` 0.
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
        if self.classes:
            d["probabilities"] = dict(zip(self.classes, self.values, strict=True))
            d["label"] = self.label
        else:
            d["forecast"] = self.values
        if self.window:
            d["window"] = self.window
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes) -> Prediction:
        d = orjson.loads(raw)
        probs = d.get("probabilities")
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
        )


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
) -> Event | DeadLetter:
    """Validate one raw message. Never raises on bad input: returns a :class:`DeadLetter`.

    >>> decode_event(b"a", b'{"unique_id": "a", "ds": "2024-01", "y": 1}', 0, 5)
    Event(unique_id='a', ds='2024-01', y=1.0, features=(), partition=0, offset=5)
    >>> decode_event(b"a", b'{"unique_id": "a", "ds": "2024-01", "y": NaN}', 0, 6).reason
    'non_finite'
    """

    if value is not None and len(value) <= max_bytes:
        try:
            data: Any = orjson.loads(value)
        except orjson.JSONDecodeError:
            pass
        else:
            fast = _well_formed(key, data, features, partition, offset)
            if fast is not None:
                return fast
    return _decode_checked(key, value, partition, offset, features, max_bytes)


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


def decode_batch(
    messages: Iterable[Message], features: Sequence[str] = (), max_bytes: int = 64 * 1024
) -> tuple[list[Event], list[DeadLetter]]:
    """:func:`decode_event` for every message, in order: the valid events and the dead letters."""
    good: list[Event] = []
    bad: list[DeadLetter] = []
    for m in messages:
        key, value = m.key, m.value
        try:
            r = decode_event(key, value, m.partition, m.offset, features, max_bytes)
        except Exception as exc:  # the decoder must never take the worker down
            log.exception("the event decoder failed on %s/%s", m.partition, m.offset)
            r = DeadLetter(
                key, value, "wrong_type", f"undecodable: {exc!r}"[:500], m.partition, m.offset
            )
        if isinstance(r, Event):
            good.append(r)
        else:
            bad.append(r)
    return good, bad


def _is_number(v: object) -> TypeGuard[float]:
    """A finite int or float within the accepted range (never a bool, NaN or infinity)."""
    return (type(v) is float or type(v) is int) and -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE


def _well_formed(
    key: bytes | None, data: Any, features: Sequence[str], partition: int, offset: int
) -> Event | None:
    """The event, when it is plainly valid; ``None`` sends it through the full checks.

    The hot path: a few type checks per event instead of a pydantic model. It accepts a subset of
    what :func:`_decode_checked` accepts, with the same result (a property test holds them equal).
    """
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
) -> Event | DeadLetter:
    """Every check, with the reason of the first that fails."""

    def dead(reason: Reason, detail: str) -> DeadLetter:
        return DeadLetter(key, value, reason, detail, partition, offset)

    if value is None:
        return dead("invalid_json", "empty message (tombstone)")
    if len(value) > max_bytes:
        return dead("too_large", f"{len(value)} bytes, limit {max_bytes}")
    try:
        data: Any = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        # orjson refuses NaN and Infinity; tell those apart from text that is not JSON at all.
        try:
            data = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            return dead("invalid_json", str(exc))
    if not isinstance(data, dict):
        return dead("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    try:
        body = EventBody.model_validate(data)
    except ValidationError as exc:
        return dead(*_reason_of(exc))
    if not key:
        return dead("empty_key", "the message key must be the entity id")
    if key != body.unique_id.encode():
        return dead("key_mismatch", f"key {key[:100]!r} != unique_id {body.unique_id[:100]!r}")
    extra = body.model_extra or {}
    if len(extra) != len(features) or any(f not in extra for f in features):
        return dead(
            "wrong_feature_count",
            f"expected features {sorted(features)}, got {sorted(extra)[:50]}",
        )
    if abs(body.y) > MAX_ABS_VALUE:
        return dead("out_of_range", f"y: |{body.y:.3g}| > {MAX_ABS_VALUE:g}")
    values: list[float] = []
    for name in features:
        v = extra[name]
        if isinstance(v, bool) or not isinstance(v, int | float):
            return dead("wrong_type", f"{name}: expected a number, got {type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            return dead("non_finite", f"{name}: {v}")
        if abs(v) > MAX_ABS_VALUE:
            return dead(
                "out_of_range",
                f"{name}: |{float(v) if abs(v) < 1e300 else 'huge'}| > {MAX_ABS_VALUE:g}",
            )
        values.append(float(v))
    return Event(body.unique_id, body.ds, body.y, tuple(values), partition, offset)
