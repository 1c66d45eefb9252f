"""``streamer tail``: predictions (or window predictions, or dead letters) as they arrive."""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable
from typing import Literal

import orjson
from rich.console import Console
from rich.markup import escape

from streamer.kafka import read_topic
from streamer.schemas import Prediction
from streamer.settings import Settings

__all__ = ["entity_filter", "format_prediction", "tail"]

Stream = Literal["predictions", "windows", "dlq"]


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


def format_prediction(p: Prediction) -> str:
    """One line of rich markup for a prediction.

    >>> format_prediction(Prediction("s1", "2020-01", 3.0, 0, 7, "v1", 2, (4.0, 5.0)))
    '              s1  2020-01              y=3          step 2      [dim]p0@7 v1[/dim]  forecast [4 5]'
    """
    head = (
        f"{escape(p.unique_id):>16}  {escape(p.ds):<20} y={p.y:<10.4g} step {p.step:<6} "
        f"[dim]p{p.partition}@{p.offset} {p.model_version}[/dim]"
    )
    if p.classes:
        ranked = sorted(zip(p.values, p.classes, strict=True), reverse=True)[:3]
        probs = " ".join(f"{escape(c)}:{v:.3f}" for v, c in ranked)
        window = f" window {p.window}" if p.window else ""
        return f"{head}  [bold]{escape(str(p.label))}[/bold]{window}  ({probs})"
    fc = " ".join(f"{v:.4g}" for v in p.values[:6])
    more = " …" if len(p.values) > 6 else ""
    return f"{head}  forecast [{fc}{more}]"


async def tail(
    settings: Settings,
    *,
    entities: list[str],
    stream: Stream = "predictions",
    from_beginning: bool,
    max_count: int | None,
    timeout_s: float | None,
    as_json: bool,
) -> int:
    topic = {
        "predictions": settings.topics.predictions,
        "windows": settings.topics.windows,
        "dlq": settings.topics.dead_letter,
    }[stream]
    keep = entity_filter(entities)
    console = Console(highlight=False, soft_wrap=True)
    n = 0
    async for key, value, part, offset, headers in read_topic(
        settings, topic, from_beginning=from_beginning, idle_timeout_s=timeout_s
    ):
        if stream == "dlq":
            entity = key.decode(errors="replace") if key else ""
            if entities and not keep(entity):
                continue
            h = {k: v.decode(errors="replace") for k, v in headers}
            if as_json:
                doc = {"key": entity, "partition": part, "offset": offset, "headers": h}
                sys.stdout.write(_json(doc, value))
            else:
                console.print(
                    f"{escape(entity):>16}  [red]{escape(h.get('streamer-reason', '?'))}[/red]  "
                    f"{escape(h.get('streamer-detail', ''))}  "
                    f"[dim]from {escape(h.get('streamer-source', ''))}[/dim]"
                )
        else:
            if value is None:
                continue
            p = Prediction.from_json(value)
            if entities and not keep(p.unique_id):
                continue
            if as_json:
                sys.stdout.buffer.write(value + b"\n")
            else:
                console.print(format_prediction(p))
        sys.stdout.flush()
        n += 1
        if max_count and n >= max_count:
            break
    return 0


def _json(doc: dict[str, object], value: bytes | None) -> str:
    doc["value"] = value.decode(errors="replace") if value is not None else None
    return orjson.dumps(doc).decode() + "\n"
