"""``streamer state stats``: what the states in Redis look like as a whole (counts by model and
version, step counts, ages and sizes as distributions), read with SCAN and MGET pages while
workers run."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from streamer.ops.states import age, decoded, open_store, progress, server_info
from streamer.settings import Settings
from streamer.state import state_key

__all__ = ["LogHistogram", "StateStats", "state_stats"]


class LogHistogram:
    """Counts of positive values in log-spaced bins (50 a decade, so a percentile read from it is
    within 5% of the exact one), with the exact minimum and maximum: the distribution of any
    number of values in a few kilobytes.

    >>> h = LogHistogram(1e-3, 1e9)
    >>> h.add(np.arange(1.0, 1001.0))
    >>> abs(h.percentile(50) / 500 - 1) < 0.05, h.min, h.max
    (True, 1.0, 1000.0)
    """

    def __init__(self, low: float, high: float, per_decade: int = 50):
        self.low = low
        self.per_decade = per_decade
        self.counts = np.zeros(int(np.ceil(np.log10(high / low) * per_decade)) + 2, np.int64)
        self.min = math.inf
        self.max = -math.inf

    def add(self, values: np.ndarray[Any, Any]) -> None:
        if not len(values):
            return
        v = np.maximum(np.asarray(values, np.float64), self.low)
        idx = np.floor(np.log10(v / self.low) * self.per_decade).astype(np.int64) + 1
        idx = np.clip(idx, 0, len(self.counts) - 1)
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))

    def percentile(self, q: float) -> float | None:
        n = int(self.counts.sum())
        if not n:
            return None
        i = int(np.searchsorted(np.cumsum(self.counts), q / 100 * n))
        mid = self.low * 10 ** ((i - 0.5) / self.per_decade)  # the bin's geometric middle
        return float(min(max(mid, self.min), self.max))


#: last-update age buckets of ``state stats``: name, upper bound in seconds
_AGE_BUCKETS = (("<1m", 60.0), ("<1h", 3600.0), ("<1d", 86400.0), ("<7d", 7 * 86400.0))


@dataclass
class StateStats:
    """What ``state stats`` reports, accumulated page by page in bounded memory."""

    entities: int = 0
    value_bytes: int = 0
    undecodable: int = 0
    dtypes: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    shapes: Counter[str] = field(default_factory=Counter)
    ages_s: LogHistogram = field(default_factory=lambda: LogHistogram(1e-3, 1e10))
    steps: LogHistogram = field(default_factory=lambda: LogHistogram(1.0, 1e13))
    age_buckets: Counter[str] = field(default_factory=Counter)

    def add_page(self, raws: list[bytes], now_ms: float) -> None:
        ages, steps = [], []
        for raw in raws:
            self.entities += 1
            self.value_bytes += len(raw)
            rec = decoded(raw)
            if rec is None:
                self.undecodable += 1
                continue
            self.dtypes[rec.dtype] += 1
            self.versions[rec.model_version] += 1
            tensors = 2 if len(rec.c) else 1
            self.shapes[f"{rec.layers}x{rec.hidden_size}x{tensors}"] += 1
            ages.append(max(0.0, (now_ms - rec.updated_ms) / 1000))
            steps.append(rec.step)
        a = np.asarray(ages)
        self.ages_s.add(a)
        self.steps.add(np.asarray(steps, np.float64))
        low = 0.0
        for name, high in _AGE_BUCKETS:
            self.age_buckets[name] += int(((a >= low) & (a < high)).sum())
            low = high
        self.age_buckets[">=7d"] += int((a >= low).sum())

    def summary(self) -> dict[str, Any]:
        ages, steps = self.ages_s, self.steps
        known = self.entities > self.undecodable
        p50 = steps.percentile(50)
        return {
            "entities": self.entities,
            "value_bytes": self.value_bytes,
            "bytes_per_entity": self.value_bytes / self.entities if self.entities else None,
            "undecodable": self.undecodable,
            "dtypes": dict(self.dtypes.most_common()),
            "model_versions": dict(self.versions.most_common()),
            "shapes": dict(self.shapes.most_common()),
            "last_update_age_s": {
                "min": ages.min if known else None,
                "p50": ages.percentile(50),
                "p90": ages.percentile(90),
                "p99": ages.percentile(99),
                "max": ages.max if known else None,
                "buckets": {name: self.age_buckets[name] for name, _ in _AGE_BUCKETS}
                | {">=7d": self.age_buckets[">=7d"]},
            },
            "steps": {
                "p50": round(p50) if p50 is not None else None,
                "max": int(steps.max) if known else None,
            },
        }


async def state_stats(
    settings: Settings, *, sample: int | None = None, as_json: bool = False
) -> int:
    """Entities, bytes, dtypes, model versions and last-update ages of the model's states (all of
    them, or the first ``sample`` the SCAN finds)."""
    st = StateStats()
    async with open_store(settings) as store:
        dbsize, info = await server_info(store)
        with progress("scan", total=dbsize) as advance:
            async for _, entities in store.scan("*"):
                if sample is not None:
                    entities = entities[: max(0, sample - st.entities)]
                raws = await store.get_many(entities) if entities else []
                st.add_page([r for r in raws if r is not None], time.time() * 1000)
                advance(len(entities))
                if sample is not None and st.entities >= sample:
                    break
    doc = {
        "model_name": settings.model_name,
        "key_pattern": state_key(settings.model_name, "*"),
        "sampled": sample is not None and st.entities >= sample,
        **st.summary(),
        "redis": {
            "keys": dbsize,
            "used_memory": info.get("used_memory"),
            "used_memory_human": info.get("used_memory_human"),
            "maxmemory": info.get("maxmemory"),
            "maxmemory_policy": info.get("maxmemory_policy"),
        },
    }
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    _print_stats(doc)
    return 0


def _print_stats(doc: dict[str, Any]) -> None:
    table = Table(title=f"states of model {doc['model_name']} ({doc['key_pattern']})")
    table.add_column("", style="bold")
    table.add_column("")
    n = doc["entities"]
    table.add_row("entities", f"{n:,}" + (" (sample)" if doc["sampled"] else ""))
    if n:
        table.add_row(
            "bytes",
            f"{doc['value_bytes']:,} in values, {doc['bytes_per_entity']:.0f} per entity",
        )
        table.add_row("dtypes", _counts(doc["dtypes"]))
        table.add_row("model versions", _counts(doc["model_versions"]))
        table.add_row("shapes (layers x hidden x tensors)", _counts(doc["shapes"]))
        a = doc["last_update_age_s"]
        if a["p50"] is not None:
            table.add_row(
                "last update, age",
                f"min {_secs(a['min'])}  p50 {_secs(a['p50'])}  p90 {_secs(a['p90'])}  "
                f"p99 {_secs(a['p99'])}  max {_secs(a['max'])}",
            )
            table.add_row("", "  ".join(f"{k}: {v:,}" for k, v in a["buckets"].items()))
        s = doc["steps"]
        if s["p50"] is not None:
            table.add_row("steps per entity", f"p50 {s['p50']:.0f}  max {s['max']}")
        if doc["undecodable"]:
            table.add_row("undecodable", f"{doc['undecodable']:,} (reset at their next event)")
    r = doc["redis"]
    mem = f"{r['used_memory_human']} used by all {r['keys']:,} keys"
    if r["maxmemory"]:
        mem += f", maxmemory {r['maxmemory']:,} ({r['maxmemory_policy']})"
    table.add_row("redis", mem)
    Console().print(table)


def _counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k or '(none)'}: {v:,}" for k, v in c.items())


def _secs(s: float) -> str:
    return age(0, s * 1000)
