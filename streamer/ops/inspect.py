"""``streamer tail``: predictions (or window predictions, or dead letters) as they arrive."""

from __future__ import annotations

import dataclasses  # noqa: F401 (the doctests)
import fnmatch
import sys
from collections.abc import Callable, Sequence
from typing import Literal

import orjson
from rich.console import Console
from rich.markup import escape

from streamer.kafka import read_topic
from streamer.ops.terminal import printable
from streamer.schemas import Prediction
from streamer.settings import Settings

__all__ = ["entity_filter", "format_prediction", "long_rows", "tail", "topic_of"]

Form = Literal["text", "json", "long"]
#: the topics ``tail --topic`` names by their role
ROLES = ("predictions", "windows", "dlq")


def entity_filter(patterns: list[str]) -> Callable[[str], bool]:
    """Entity ids as given, or shell-style patterns (``store-*``); no pattern: every entity.

    >>> keep = entity_filter(["a", "store-1*"])
    >>> [keep(e) for e in ("a", "b", "store-12", "store-2")]
    [True, False, True, False]
    """
    if not patterns:
        return lambda _: True
    exact = {p for p in patterns if not any(c in p for c in "*?[")}
    globs = [p for p in patterns if p not in exact]
    return lambda e: e in exact or any(fnmatch.fnmatchcase(e, g) for g in globs)


def topic_of(settings: Settings, topic: str) -> str:
    """The topic ``tail --topic`` reads: a role's (predictions, windows, dlq) from the settings,
    or the name as given.

    >>> s = Settings.model_validate({"topics": {"events": "ev"}})
    >>> topic_of(s, "dlq"), topic_of(s, "windows"), topic_of(s, "my.out")
    ('ev.dlq', 'predictions.windows', 'my.out')
    """
    return {
        "predictions": settings.topics.predictions,
        "windows": settings.topics.windows,
        "dlq": settings.topics.dead_letter,
    }.get(topic, topic)


def long_header(levels: Sequence[int] = ()) -> str:
    """The CSV header of :func:`long_rows`: Nixtla's names, intervals as ``streamer-lo-80``.

    >>> long_header((80,))
    'unique_id,ds,cutoff,h,streamer,streamer-lo-80,streamer-hi-80'
    """
    return ",".join(
        ["unique_id,ds,cutoff,h,streamer"]
        + [f"streamer-{side}-{v}" for v in levels for side in ("lo", "hi")]
    )


#: the long format of a next-event model's predictions: a row per value named, most likely first
NEXT_HEADER = "unique_id,ds,k,next,probability"


def long_rows(p: Prediction, levels: Sequence[int] = ()) -> list[str]:
    """A forecast as CSV rows of :func:`long_header` (Nixtla's long format, with the forecast's
    origin as the cutoff): one row per step ahead, with the bounds of its intervals at ``levels``
    (empty where the prediction has none); ``ds`` is empty when the model knows no frequency. A
    classifier's prediction is one row with its label.

    >>> p = Prediction("s,1", "2020-01", 3.0, 0, 7, "v1", 2, (4.0, 5.5))
    >>> long_rows(dataclasses.replace(p, forecast_ds=("2020-02", "2020-03")))
    ['"s,1",2020-02,2020-01,1,4.0', '"s,1",2020-03,2020-01,2,5.5']
    >>> long_rows(dataclasses.replace(p, intervals={80: ((3.0, 4.0), (5.0, 7.0))}), (80, 95))
    ['"s,1",,2020-01,1,4.0,3.0,5.0,,', '"s,1",,2020-01,2,5.5,4.0,7.0,,']
    """
    uid = _csv(p.unique_id)
    if p.next:  # a next-event model's: one row per value it names (NEXT_HEADER)
        return [
            f"{uid},{_csv(p.ds)},{k},{_csv(v)},{prob!r}"
            for k, (v, prob) in enumerate(zip(p.next, p.values, strict=True), start=1)
        ]
    if p.classes:
        return [f"{uid},{_csv(p.ds)},{_csv(p.ds)},0,{_csv(str(p.label))}" + "," * 2 * len(levels)]
    stamps = p.forecast_ds or ("",) * len(p.values)
    rows = []
    for h, (d, v) in enumerate(zip(stamps, p.values, strict=True), start=1):
        bounds = "".join(
            f",{p.intervals[lv][0][h - 1]!r},{p.intervals[lv][1][h - 1]!r}"
            if lv in p.intervals
            else ",,"
            for lv in levels
        )
        rows.append(f"{uid},{_csv(d)},{_csv(p.ds)},{h},{v!r}{bounds}")
    return rows


def _csv(field: str) -> str:
    if any(c in field for c in ',"\n\r'):
        return '"' + field.replace('"', '""') + '"'
    return field


def format_prediction(p: Prediction) -> str:
    """One line of rich markup for a prediction.

    >>> format_prediction(Prediction("s1", "2020-01", 3.0, 0, 7, "v1", 2, (4.0, 5.0)))
    '              s1  2020-01              y=3          step 2      [dim]p0@7 v1[/dim]  forecast [4 5]'
    """
    head = (
        f"{escape(printable(p.unique_id)):>16}  {escape(printable(p.ds)):<20} "
        f"y={p.y:<10.4g} step {p.step:<6} "
        f"[dim]p{p.partition}@{p.offset} {p.model_version}[/dim]"
    )
    if p.next:
        top = zip(p.next[:5], p.values, strict=False)
        named = " ".join(f"{printable(v)}:{q:.3g}" for v, q in top)
        more = " …" if len(p.next) > 5 else ""
        surprise = "" if p.surprise is None else f"  surprise {p.surprise:.3f}"
        rank = "" if p.surprise is None else f" rank {p.rank if p.rank is not None else '>k'}"
        return f"{head}  next {escape(f'[{named}{more}]')}{surprise}{rank}"
    if p.classes:
        ranked = sorted(zip(p.values, p.classes, strict=True), reverse=True)[:3]
        probs = " ".join(f"{escape(c)}:{v:.3f}" for v, c in ranked)
        window = f" window {p.window}" if p.window else ""
        return f"{head}  [bold]{escape(str(p.label))}[/bold]{window}  ({probs})"
    fc = " ".join(f"{v:.4g}" for v in p.values[:6])
    more = " …" if len(p.values) > 6 else ""
    # the intervals of the first step ahead
    bounds = "".join(f"  {v}% {lo[0]:.4g}..{hi[0]:.4g}" for v, (lo, hi) in p.intervals.items())
    return f"{head}  forecast [{fc}{more}]{bounds}"


async def tail(
    settings: Settings,
    *,
    entities: list[str],
    topic: str = "predictions",
    from_beginning: bool,
    max_count: int | None,
    timeout_s: float | None,
    form: Form = "text",
) -> int:
    name = topic_of(settings, topic)
    dead_letters = name == settings.topics.dead_letter or name.endswith(".dlq")
    keep = entity_filter(entities)
    console = Console(highlight=False, soft_wrap=True)
    start = "from the beginning" if from_beginning else "from now on"
    print(f"reading {name} at {settings.kafka.bootstrap_servers} {start}", file=sys.stderr)
    levels: tuple[int, ...] | None = None  # (the long format's, from the first prediction)
    n = 0
    async for key, value, part, offset, headers in read_topic(
        settings, name, from_beginning=from_beginning, idle_timeout_s=timeout_s
    ):
        if dead_letters:
            entity = key.decode(errors="replace") if key else ""
            if entities and not keep(entity):
                continue
            h = {k: v.decode(errors="replace") for k, v in headers}
            if form != "text":
                doc = {"key": entity, "partition": part, "offset": offset, "headers": h}
                sys.stdout.write(_json(doc, value))
            else:
                console.print(
                    f"{escape(printable(entity)):>16}  "
                    f"[red]{escape(h.get('streamer-reason', '?'))}[/red]  "
                    f"{escape(printable(h.get('streamer-detail', '')))}  "
                    f"[dim]from {escape(h.get('streamer-source', ''))}[/dim]"
                )
        else:
            if value is None:
                continue
            p = Prediction.from_json(value)
            if entities and not keep(p.unique_id):
                continue
            if form == "json":
                sys.stdout.buffer.write(value + b"\n")
            elif form == "long":
                if levels is None:
                    levels = tuple(p.intervals)
                    sys.stdout.write((NEXT_HEADER if p.next else long_header(levels)) + "\n")
                sys.stdout.write("".join(row + "\n" for row in long_rows(p, levels)))
            else:
                console.print(format_prediction(p))
        sys.stdout.flush()
        n += 1
        if max_count and n >= max_count:
            break
    if form == "long" and not dead_letters and levels is None:
        sys.stdout.write(long_header() + "\n")  # (no prediction came: the header alone)
    return 0


def _json(doc: dict[str, object], value: bytes | None) -> str:
    doc["value"] = value.decode(errors="replace") if value is not None else None
    return orjson.dumps(doc).decode() + "\n"
