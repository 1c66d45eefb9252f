"""Reading what streamer wrote: one entity's state in Redis, predictions on their topic."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import numpy as np
import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich.console import Console
from rich.table import Table

from streamer import scaling
from streamer.codec import StateRecord, decode
from streamer.errors import StateError, StoreUnavailable
from streamer.kafka import read_topic
from streamer.schemas import Prediction
from streamer.settings import Settings
from streamer.state import RedisStateStore

__all__ = ["record_to_dict", "show_state", "tail"]


def record_to_dict(entity: str, key: str, rec: StateRecord) -> dict[str, object]:
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
    }


async def show_state(settings: Settings, entity: str, *, as_json: bool = False) -> int:
    store = RedisStateStore.from_settings(settings)
    try:
        try:
            raw = (await store.get_many([entity]))[0]
        except StoreUnavailable:
            raise StoreUnavailable(f"cannot reach Redis at {settings.redis.url}") from None
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(f"cannot reach Redis at {settings.redis.url}: {exc}") from None
    finally:
        await store.aclose()
    key = store.key(entity)
    if raw is None:
        raise StateError(f"no state for entity {entity!r} (key {key})")
    d = record_to_dict(entity, key, decode(raw))
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(d, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    table = Table(title=f"state of {entity}", show_header=False)
    for name in ("key", "model_version", "step", "partition", "offset", "updated", "dtype"):
        table.add_row(name, str(d[name]))
    sc = d["scaling"]
    assert isinstance(sc, dict)
    table.add_row(
        "scaling", f"mean {sc['mean']:.6g}  scale {sc['scale']:.6g}  count {sc['count']:.0f}"
    )
    rec = decode(raw)
    for name, arr in (("h", rec.h), ("c", rec.c)):
        for layer in range(rec.layers):
            v = arr[layer]
            head = " ".join(f"{x:+.3f}" for x in v[:6])
            table.add_row(
                f"{name}[{layer}]",
                f"norm {np.linalg.norm(v):.4f}  min {v.min():+.3f}  max {v.max():+.3f}  [{head} …]",
            )
    Console().print(table)
    return 0


async def tail(
    settings: Settings,
    *,
    entities: set[str],
    from_beginning: bool,
    max_count: int | None,
    timeout_s: float | None,
    as_json: bool,
) -> int:
    console = Console(highlight=False, soft_wrap=True)
    n = 0
    async for _k, value, _p, _o, _h in read_topic(
        settings,
        settings.topics.predictions,
        from_beginning=from_beginning,
        idle_timeout_s=timeout_s,
    ):
        if value is None:
            continue
        p = Prediction.from_json(value)
        if entities and p.unique_id not in entities:
            continue
        if as_json:
            sys.stdout.buffer.write(value + b"\n")
            sys.stdout.flush()
        else:
            fc = " ".join(f"{v:.4g}" for v in p.forecast[:6])
            more = " …" if len(p.forecast) > 6 else ""
            console.print(
                f"{p.unique_id:>16}  {p.ds:<20} y={p.y:<10.4g} step {p.step:<6} "
                f"[dim]p{p.partition}@{p.offset}[/dim]  forecast [{fc}{more}]"
            )
        n += 1
        if max_count and n >= max_count:
            break
    return 0
