"""``streamer state ...``: the per-entity states in Redis, for people.

``get``, ``list``, ``stats``, ``reset``, ``delete`` and ``export`` work against a live Redis while
workers run. Reads never block them: keys are walked with ``SCAN`` (never ``KEYS``) and read in
pages of one ``MGET``. Writes are safe too: a reset is a compare-and-set on the record it read, and
the workers' own compare-and-set refuses a write stepped from a record that was reset or deleted
since (see :mod:`streamer.state`), so a worker's memory of the old state never overwrites the
change; it steps the entity's next events from what Redis holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamer import scaling
from streamer.errors import ConfigError, StateCodecError, StateError, StoreUnavailable
from streamer.settings import Settings
from streamer.state import RedisClusterStateStore, RedisStateStore, state_key
from streamer.state.codec import StateRecord, decode, encode

__all__ = [
    "delete_state",
    "export_states",
    "list_states",
    "record_to_dict",
    "reset_state",
    "show_state",
    "state_stats",
]

T = TypeVar("T")
#: keys per SCAN page and per MGET
PAGE = 1000


def record_to_dict(entity: str, key: str, rec: StateRecord) -> dict[str, Any]:
    """A decoded record as plain data (the JSON of ``state get --json`` and the rows of export)."""
    stats = (np.array([rec.count]), np.array([rec.mean]), np.array([rec.var]))
    return {
        "entity": entity,
        "key": key,
        "model_version": rec.model_version,
        "step": rec.step,
        "partition": rec.partition,
        "offset": rec.offset,
        "updated": datetime.fromtimestamp(rec.updated_ms / 1000, UTC).isoformat(),
        "dtype": rec.dtype,
        "layers": rec.layers,
        "hidden_size": rec.hidden_size,
        "scaling": {
            "count": rec.count,
            "mean": rec.mean,
            "var": rec.var,
            "scale": float(scaling.scale_of(stats)[0]),
        },
        "h": rec.h.tolist(),
        "c": rec.c.tolist(),
        "kept_outputs": len(rec.out_offsets),
    }


@contextlib.asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[RedisStateStore]:
    """The state store, with an unreachable Redis reported in one line."""
    store = RedisStateStore.from_settings(settings)
    try:
        yield store
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StoreUnavailable(f"cannot reach Redis at {settings.redis.url}: {exc}") from None
    except StoreUnavailable:
        raise StoreUnavailable(f"cannot reach Redis at {settings.redis.url}") from None
    except (RedisError, RedisClusterException) as exc:
        raise StateError(f"redis at {settings.redis.url}: {type(exc).__name__}: {exc}") from None
    finally:
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await store.aclose()


async def _server(store: RedisStateStore) -> tuple[int, dict[str, Any]]:
    """The number of keys and the memory facts (INFO memory) of the Redis, or of all the primaries
    of a cluster: their sums, and the first primary's policy."""
    if not isinstance(store, RedisClusterStateStore):
        return int(await store.redis.dbsize()), dict(await store.redis.info("memory"))
    cluster: RedisCluster = store.redis
    await cluster.initialize()
    infos = [dict(await n.execute_command("INFO", "memory")) for n in cluster.get_primaries()]
    keys = sum([int(await n.execute_command("DBSIZE")) for n in cluster.get_primaries()])
    used = sum(int(i.get("used_memory", 0)) for i in infos)
    return keys, {
        "used_memory": used,
        "used_memory_human": f"{used / 2**20:.2f}M over {len(infos)} primaries",
        "maxmemory": sum(int(i.get("maxmemory", 0)) for i in infos),
        "maxmemory_policy": infos[0].get("maxmemory_policy") if infos else None,
    }


def _text(b: bytes | str) -> str:
    return b.decode() if isinstance(b, bytes) else b


def _decoded(raw: bytes | None) -> StateRecord | None:
    if raw is None:
        return None
    try:
        return decode(raw)
    except StateCodecError:
        return None


def _age(updated_ms: int, now_ms: float) -> str:
    s = max(0.0, (now_ms - updated_ms) / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.1f}s"


async def show_state(settings: Settings, entity: str, *, as_json: bool = False) -> int:
    async with _store(settings) as store:
        raw = (await store.get_many([entity]))[0]
    key = store.key(entity)
    if raw is None:
        raise StateError(f"no state for entity {entity!r} (key {key})")
    rec = decode(raw)
    d = record_to_dict(entity, key, rec)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(d, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    table = Table(title=f"state of {entity}", show_header=False)
    for name in ("key", "model_version", "step", "partition", "offset", "updated", "dtype"):
        table.add_row(name, str(d[name]))
    table.add_row("bytes", str(len(raw)))
    sc = d["scaling"]
    table.add_row(
        "scaling", f"mean {sc['mean']:.6g}  scale {sc['scale']:.6g}  count {sc['count']:.0f}"
    )
    table.add_row("kept outputs", str(d["kept_outputs"]))
    for name, arr in (("h", rec.h), ("c", rec.c)):
        for layer in range(len(arr)):
            v = arr[layer]
            head = " ".join(f"{x:+.3f}" for x in v[:6])
            table.add_row(
                f"{name}[{layer}]",
                f"norm {np.linalg.norm(v):.4f}  min {v.min():+.3f}  max {v.max():+.3f}  [{head} …]",
            )
    Console().print(table)
    return 0


async def list_states(
    settings: Settings,
    pattern: str = "*",
    *,
    limit: int = 50,
    cursor: int = 0,
    as_json: bool = False,
) -> int:
    """About ``limit`` states whose entity matches ``pattern`` (whole SCAN pages), and the cursor
    to go on from."""
    rows: list[dict[str, Any]] = []
    now = time.time() * 1000
    next_cursor = 0
    async with _store(settings) as store:
        async for page_cursor, entities in store.scan(pattern, cursor, min(limit, PAGE)):
            next_cursor = page_cursor
            raws = await store.get_many(entities) if entities else []
            for entity, raw in zip(entities, raws, strict=True):
                if raw is None:
                    continue  # expired or deleted between SCAN and MGET
                rec = _decoded(raw)
                rows.append(
                    {
                        "entity": entity,
                        "step": rec.step if rec else None,
                        "model_version": rec.model_version if rec else None,
                        "partition": rec.partition if rec else None,
                        "offset": rec.offset if rec else None,
                        "updated_ms": rec.updated_ms if rec else None,
                        "bytes": len(raw),
                    }
                )
            if len(rows) >= limit:
                break
    if as_json:
        doc = {"states": rows, "cursor": next_cursor}
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    console = Console()
    if not rows:
        console.print(f"no states match {state_key(settings.model_name, pattern)}")
        return 0
    table = Table(title=f"states of model {settings.model_name} matching {pattern!r}")
    for col in ("entity", "step", "version", "partition", "offset", "updated", "bytes"):
        table.add_column(col, justify="left" if col in ("entity", "version") else "right")
    for r in sorted(rows, key=lambda r: r["entity"]):
        table.add_row(
            r["entity"],
            str(r["step"]) if r["step"] is not None else "undecodable",
            r["model_version"] or "",
            str(r["partition"] if r["partition"] is not None else ""),
            str(r["offset"] if r["offset"] is not None else ""),
            _age(r["updated_ms"], now) + " ago" if r["updated_ms"] is not None else "",
            str(r["bytes"]),
        )
    console.print(table)
    if next_cursor:
        console.print(
            f"{len(rows)} shown; more: streamer state list {pattern!r} --cursor {next_cursor}"
        )
    return 0


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
            rec = _decoded(raw)
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
    async with _store(settings) as store:
        dbsize, info = await _server(store)
        with _progress("scan", total=dbsize) as advance:
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
    return _age(0, s * 1000)


async def reset_state(settings: Settings, entity: str) -> int:
    """Start an entity's memory over: zeros for its state and scaling statistics, the step count
    back to 0; its fence and kept predictions stay, so no event it applied is applied again."""
    async with _store(settings) as store:
        key = store.key(entity)
        rec = await _change(store.redis, key, entity, _zeroed)
    print(
        f"reset {entity}: its state starts over at its next event (fence partition "
        f"{rec.partition}, offset {rec.offset} and {len(rec.out_offsets)} kept predictions kept)"
    )
    return 0


def _zeroed(rec: StateRecord) -> StateRecord:
    return dataclasses.replace(
        rec, h=np.zeros_like(rec.h), c=np.zeros_like(rec.c), step=0, count=0.0, mean=0.0, var=0.0
    )


#: Write ARGV[2] over a record only if it still is ARGV[1], keeping its TTL.
_SWAP_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""


async def _change(
    client: Any, key: str, entity: str, change: Callable[[StateRecord], StateRecord]
) -> StateRecord:
    """Read, change and write back a record if no one wrote it meanwhile (a compare-and-set
    script: the same in a Redis and a Redis Cluster), keeping its TTL; the new record's write time
    is later than the old one's, so a worker that read the old one is refused by its own
    compare-and-set."""
    for _ in range(50):
        raw = await client.get(key)
        if not isinstance(raw, bytes):
            raise StateError(f"no state for entity {entity!r} (key {key})")
        try:
            rec = decode(raw)
        except StateCodecError as exc:
            raise StateError(f"the state of {entity!r} cannot be decoded ({exc})") from None
        rec = dataclasses.replace(
            change(rec), updated_ms=max(int(time.time() * 1000), rec.updated_ms + 1)
        )
        if await client.eval(_SWAP_LUA, 1, key, raw, encode(rec)):
            return rec
        await asyncio.sleep(0.01)  # a worker wrote it: read it again
    raise StateError(f"the state of {entity!r} kept changing; try again")


async def delete_state(settings: Settings, entity: str) -> int:
    """Forget an entity: its next event starts from zeros, and events it already applied but whose
    offsets are not committed would be applied again (``reset`` keeps the fence)."""
    async with _store(settings) as store:
        key = store.key(entity)
        gone = await store.redis.delete(key)
    if not gone:
        raise StateError(f"no state for entity {entity!r} (key {key})")
    print(f"deleted {key}")
    return 0


async def export_states(settings: Settings, pattern: str, path: Path) -> int:
    """Decoded states of the entities matching ``pattern`` to Parquet (``.parquet``) or JSON lines
    (``.jsonl``, ``.ndjson``), written page by page to a temporary file that takes the name once
    complete (a failed export leaves no partial file)."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".jsonl", ".ndjson"):
        raise ConfigError(f"export writes .parquet or .jsonl files, not {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    n = skipped = 0
    part = path.with_name(f".{path.name}.part")
    try:
        async with _store(settings) as store:
            dbsize, _ = await _server(store)
            with _progress("export", total=dbsize) as advance, _writer(part, suffix) as write:
                async for _, entities in store.scan(pattern):
                    raws = await store.get_many(entities) if entities else []
                    rows = []
                    for entity, raw in zip(entities, raws, strict=True):
                        rec = _decoded(raw)
                        if rec is None:
                            skipped += raw is not None
                            continue
                        rows.append(record_to_dict(entity, store.key(entity), rec))
                    write(rows)
                    n += len(rows)
                    advance(len(entities))
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    print(
        f"exported {n} states matching {pattern!r} to {path}"
        + (f" ({skipped} undecodable skipped)" if skipped else "")
    )
    return 0


@contextlib.contextmanager
def _writer(path: Path, suffix: str) -> Iterator[Callable[[list[dict[str, Any]]], None]]:
    if suffix != ".parquet":
        with path.open("wb") as fh:

            def write_lines(rows: list[dict[str, Any]]) -> None:
                fh.writelines(orjson.dumps(r) + b"\n" for r in rows)

            yield write_lines
        return

    import pyarrow as pa
    import pyarrow.parquet as pq

    scale = pa.struct(
        [
            ("count", pa.float64()),
            ("mean", pa.float64()),
            ("var", pa.float64()),
            ("scale", pa.float64()),
        ]
    )
    matrix = pa.list_(pa.list_(pa.float32()))
    schema = pa.schema(
        [
            ("entity", pa.string()),
            ("key", pa.string()),
            ("model_version", pa.string()),
            ("step", pa.int64()),
            ("partition", pa.int32()),
            ("offset", pa.int64()),
            ("updated", pa.string()),
            ("dtype", pa.string()),
            ("layers", pa.int32()),
            ("hidden_size", pa.int32()),
            ("scaling", scale),
            ("h", matrix),
            ("c", matrix),
            ("kept_outputs", pa.int32()),
        ]
    )
    with pq.ParquetWriter(str(path), schema) as pw:

        def write_table(rows: list[dict[str, Any]]) -> None:
            if rows:
                pw.write_table(pa.Table.from_pylist(rows, schema=schema))

        yield write_table


@contextlib.contextmanager
def _progress(what: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal (``total``: all keys, an upper bound)."""
    with Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as prog:
        task = prog.add_task(what, total=total)
        yield lambda n: prog.advance(task, n)
