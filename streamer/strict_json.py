"""JSON as an event's bytes are read when they are not plainly valid: strictly (UTF-8 only, no
byte-order mark, bounded nesting), never raising, and naming the keys an object gives twice, so
that :func:`streamer.schemas.decode_event` can give each bad message its reason."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

__all__ = ["BEYOND", "MAX_DEPTH", "depth", "magnitude", "number", "parse"]


#: Nesting deeper than this is not an event, whatever else it is: refused before any parser
#: recurses into it.
MAX_DEPTH = 64
#: A number beyond the range of a double (``1e400``, a 400-digit integer) stands for this value:
#: finite, and out of range like any other number above :data:`streamer.schemas.MAX_ABS_VALUE`.
BEYOND = 1.7976931348623157e308
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_OPEN = np.frombuffer(b"[{", np.uint8)
_CLOSE = np.frombuffer(b"]}", np.uint8)


def depth(value: bytes) -> int:
    """How deeply a JSON text nests arrays and objects (strings left out), without recursion.

    >>> depth(b'{"a": [[1], "]]]"]}'), depth(b"1")
    (3, 0)
    """
    bare = np.frombuffer(_STRING.sub(b'""', value), np.uint8)
    step = np.isin(bare, _OPEN).astype(np.int64) - np.isin(bare, _CLOSE)
    return int(np.cumsum(step).max(initial=0))


def number(text: str) -> float | int:
    """A JSON number as Python's parser reads it, but never infinite nor an integer too long to
    convert: a literal beyond a double's range is :data:`BEYOND` (out of range, not "not a
    number")."""
    if "." in text or "e" in text or "E" in text or len(text) > 18:
        v = float(text)
        return v if math.isfinite(v) else math.copysign(BEYOND, v)
    return int(text)


def parse(value: bytes) -> tuple[Any, list[str]] | str:
    """The JSON value of a message and the top-level keys it gives twice; or why it is not JSON.

    Strict: UTF-8 only, no byte-order mark (orjson's rules; Python's ``json`` also takes UTF-16
    and UTF-32 from bytes), nothing nested deeper than :data:`MAX_DEPTH`. ``NaN`` and
    ``Infinity`` are read (as the non-finite floats they name) so that the checks can say so.
    """
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc}"
    if text.startswith("\ufeff"):
        return "starts with a byte-order mark (JSON text is UTF-8 without one)"
    if depth(value) > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    seen: list[list[str]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            names = [k for k, _ in items]
            seen.append(sorted({k for k in names if names.count(k) > 1}))
        else:
            seen.append([])
        return out

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_int=number, parse_float=number)
    except (ValueError, RecursionError) as exc:
        return str(exc)[:200] or type(exc).__name__
    # the hook saw the innermost objects first: the last call was the top-level object's
    return data, seen[-1] if seen and isinstance(data, dict) else []


def magnitude(v: float) -> str:
    """A number's size for a dead letter's reason: ``|1e+31|``, or beyond a double's range."""
    return "beyond a double's range" if abs(v) >= BEYOND else f"|{float(v):.3g}|"
