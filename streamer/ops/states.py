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
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
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
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamer import scaling
from streamer.errors import ConfigError, StateCodecError, StateError, StoreUnavailable
from streamer.model import nextevent
from streamer.ops.terminal import printable
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
        # a seasonal forecaster's level and seasonal indices (streamer.seasonal; with a second
        # season its indices follow the first's), else None
        "components": {
            "observations": float(rec.comp[0]),
            "level": float(rec.comp[1]),
            "seasonal": rec.comp[2:].tolist(),
        }
        if len(rec.comp) >= 2 and rec.comp[0] >= 0
        else None,
        # a next-event model's last prediction (streamer.model.nextevent), else None
        "previous_prediction": {
            "log_sum_exp": float(rec.comp[1]),
            "top_ids": [int(i) for i in rec.comp[2:]],
        }
        if len(rec.comp) >= 2 and rec.comp[0] == nextevent.MARKER
        else None,
    }


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[RedisStateStore]:
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


async def server_info(store: RedisStateStore) -> tuple[int, dict[str, Any]]:
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


def decoded(raw: bytes | None) -> StateRecord | None:
    if raw is None:
        return None
    try:
        return decode(raw)
    except StateCodecError:
        return None


def age(updated_ms: int, now_ms: float) -> str:
    s = max(0.0, (now_ms - updated_ms) / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.1f}s"


async def show_state(settings: Settings, entity: str, *, as_json: bool = False) -> int:
    async with open_store(settings) as store:
        raw = (await store.get_many([entity]))[0]
    key = store.key(entity)
    if raw is None:
        raise StateError(f"no state for entity {entity!r} (key {key})")
    rec = decode(raw)
    d = record_to_dict(entity, key, rec)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(d, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    table = Table(title=f"state of {escape(printable(entity))}", show_header=False)
    for name in ("key", "model_version", "step", "partition", "offset", "updated", "dtype"):
        table.add_row(name, escape(printable(str(d[name]))))
    table.add_row("bytes", str(len(raw)))
    sc = d["scaling"]
    table.add_row(
        "scaling", f"mean {sc['mean']:.6g}  scale {sc['scale']:.6g}  count {sc['count']:.0f}"
    )
    table.add_row("kept outputs", str(d["kept_outputs"]))
    if (co := d["components"]) is not None:
        season = co["seasonal"]
        head = " ".join(f"{x:+.4g}" for x in season[:6])
        table.add_row(
            "components",
            f"level {co['level']:.6g}  seasonal over {len(season)} steps [{head}"
            f"{' …' if len(season) > 6 else ''}]  after {co['observations']:.0f} observations",
        )
    if (pp := d["previous_prediction"]) is not None:
        ids = " ".join(str(i) for i in pp["top_ids"][:10])
        table.add_row(
            "last prediction",
            f"top ids [{ids}{' …' if len(pp['top_ids']) > 10 else ''}] (vocabulary ids of the "
            f"model's predicted column)  log-sum-exp {pp['log_sum_exp']:.6g}",
        )
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
    again: Callable[[int], str] | None = None,
) -> int:
    """About ``limit`` states whose entity matches ``pattern`` (whole SCAN pages), and the cursor
    to go on from; ``again(cursor)``: the command that shows the next page (default: the same
    pattern with ``--cursor``)."""
    rows: list[dict[str, Any]] = []
    now = time.time() * 1000
    next_cursor = 0
    async with open_store(settings) as store:
        async for page_cursor, entities in store.scan(pattern, cursor, min(limit, PAGE)):
            next_cursor = page_cursor
            raws = await store.get_many(entities) if entities else []
            for entity, raw in zip(entities, raws, strict=True):
                if raw is None:
                    continue  # expired or deleted between SCAN and MGET
                rec = decoded(raw)
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
            escape(printable(r["entity"])),
            str(r["step"]) if r["step"] is not None else "undecodable",
            r["model_version"] or "",
            str(r["partition"] if r["partition"] is not None else ""),
            str(r["offset"] if r["offset"] is not None else ""),
            age(r["updated_ms"], now) + " ago" if r["updated_ms"] is not None else "",
            str(r["bytes"]),
        )
    console.print(table)
    if next_cursor:
        more = (
            again(next_cursor)
            if again
            else f"streamer state list {shlex.quote(pattern)} --cursor {next_cursor}"
        )
        console.print(f"{len(rows)} shown; more: {escape(more)}", soft_wrap=True)
    return 0


async def reset_state(settings: Settings, entity: str) -> int:
    """Start an entity's memory over: zeros for its state, scaling statistics and seasonal
    components, the step count back to 0; its fence and kept predictions stay, so no event it
    applied is applied again."""
    async with open_store(settings) as store:
        key = store.key(entity)
        rec = await _change(store.redis, key, entity, _zeroed)
    print(
        f"reset {entity}: its state starts over at its next event (fence partition "
        f"{rec.partition}, offset {rec.offset} and {len(rec.out_offsets)} kept predictions kept)"
    )
    return 0


def _zeroed(rec: StateRecord) -> StateRecord:
    return dataclasses.replace(
        rec,
        h=np.zeros_like(rec.h),
        c=np.zeros_like(rec.c),
        step=0,
        count=0.0,
        mean=0.0,
        var=0.0,
        comp=np.zeros_like(rec.comp),
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
    async with open_store(settings) as store:
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
        async with open_store(settings) as store:
            dbsize, _ = await server_info(store)
            with progress("export", total=dbsize) as advance, _writer(part, suffix) as write:
                async for _, entities in store.scan(pattern):
                    raws = await store.get_many(entities) if entities else []
                    rows = []
                    for entity, raw in zip(entities, raws, strict=True):
                        rec = decoded(raw)
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
            (
                "components",
                pa.struct(
                    [
                        ("observations", pa.float64()),
                        ("level", pa.float64()),
                        ("seasonal", pa.list_(pa.float64())),
                    ]
                ),
            ),
            (
                "previous_prediction",
                pa.struct([("log_sum_exp", pa.float64()), ("top_ids", pa.list_(pa.int64()))]),
            ),
        ]
    )
    with pq.ParquetWriter(str(path), schema) as pw:

        def write_table(rows: list[dict[str, Any]]) -> None:
            if rows:
                pw.write_table(pa.Table.from_pylist(rows, schema=schema))

        yield write_table


@contextlib.contextmanager
def progress(what: str, total: int) -> Iterator[Callable[[int], None]]:
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
