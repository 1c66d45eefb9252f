"""Benchmark: what fp16 and bf16 state storage cost in accuracy and buy in bytes, against fp32.

    python bench/state_dtype.py [--model DIR] [--redis-url URL]

Streams the aus_retail panel (64,532 events, 152 entities) through the predictor three times, with
h and c stored in Redis as float32, float16 and bfloat16, and compares every forecast with the
offline float32 ``nn.LSTM`` forecast. The model is the demo's (``make demo`` trains it). Needs a
Redis (``make services-up``). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import uuid
from pathlib import Path

import numpy as np
import torch

from streamer.model.artifact import load_artifact
from streamer.schemas import Event
from streamer.serve.predictor import Predictor
from streamer.state import RedisStateStore
from streamer.train.data import demo_panel, event_rows, split_series
from streamer.train.offline import offline_predict


def events_of(df) -> list[Event]:  # type: ignore[no-untyped-def]
    offsets: dict[int, int] = {}
    out = []
    for row in event_rows(df):
        uid = str(row["unique_id"])
        p = hash(uid) % 4
        off = offsets.get(p, 0)
        offsets[p] = off + 1
        out.append(Event(uid, str(row["ds"]), float(row["y"]), (), p, off))  # type: ignore[arg-type]
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(1)
    art = load_artifact(args.model)
    df = demo_panel()
    events = events_of(df)
    offline = {s.unique_id: offline_predict(art.model, s)[0] for s in split_series(df)}
    results: dict[str, object] = {}
    for dtype in ("float32", "float16", "bfloat16"):
        ns = f"bench{uuid.uuid4().hex[:8]}"
        store = RedisStateStore.from_url(args.redis_url, ns)
        pred = Predictor(art.model, art.version, store, state_dtype=dtype)  # type: ignore[arg-type]
        rel, absolute = [], []
        committed: dict[int, int] = {}  # as the worker commits after every batch
        for i in range(0, len(events), 256):
            batch = events[i : i + 256]
            report = await pred.process(batch, committed)
            for e in batch:
                committed[e.partition] = max(committed.get(e.partition, 0), e.offset + 1)
            for p in report.predictions:
                ref = offline[p.unique_id][p.step - 1]
                got = np.asarray(p.served)
                absolute.append(np.abs(got - ref).max())
                rel.append((np.abs(got - ref) / np.maximum(np.abs(ref), 1e-9)).max())
        raw = (await store.get_many([events[0].unique_id]))[0]
        assert raw is not None
        keys = [k async for k in store.redis.scan_iter(f"streamer:{ns}:*", count=1000)]
        await store.redis.delete(*keys)
        await pred.aclose()
        r = np.asarray(rel)
        results[dtype] = {
            "record_bytes": len(raw),
            "h_c_bytes": 2
            * art.spec.num_layers
            * art.spec.hidden_size
            * (4 if dtype == "float32" else 2),
            "forecast_rel_error_median": float(np.median(r)),
            "forecast_rel_error_p99": float(np.percentile(r, 99)),
            "forecast_rel_error_max": float(r.max()),
            "forecast_abs_error_max": float(np.max(absolute)),
        }
    return {
        "benchmark": "state dtype: forecast error against offline float32 nn.LSTM",
        "data": "aus_retail, 64532 events, 152 entities",
        "model": {
            "version": art.version,
            "hidden_size": art.spec.hidden_size,
            "layers": art.spec.num_layers,
        },
        "results": results,
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", type=Path, default=Path.home() / ".cache" / "streamer" / "demo" / "model"
    )
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    if not (args.model / "spec.json").is_file():
        raise SystemExit(f"no model at {args.model}: run `make demo` first, or pass --model DIR")
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
