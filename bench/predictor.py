"""Benchmark: the batched predictor against the naive per-event path, same run, same Redis.

    python bench/predictor.py [--redis-url URL] [--entities N] [--events N] [--batch N]

Needs a Redis (``deploy/local/services.sh up redis``). Prints one JSON document: events per second
and per-batch latency percentiles for each path, their ratio, and the machine. Not a test: these
machines are noisy, so compare the two numbers of one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from streamer.model import ModelSpec, SequenceModel
from streamer.model.artifact import load_artifact, save_artifact
from streamer.schemas import Event
from streamer.serve.predictor import Predictor
from streamer.state import RedisStateStore


def make_events(n_entities: int, n_events: int, seed: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed)
    ents = rng.integers(0, n_entities, n_events)
    ys = rng.normal(100, 10, n_events)
    offsets: dict[int, int] = {}
    out = []
    for e, y in zip(ents.tolist(), ys.tolist(), strict=True):
        p = e % 4
        off = offsets.get(p, 0)
        offsets[p] = off + 1
        out.append(Event(f"ent{e}", "2024-01-01", y, (), p, off))
    return out


async def run_path(pred: Predictor, events: list[Event], batch: int) -> dict[str, float]:
    lat = []
    start = time.perf_counter()
    for i in range(0, len(events), batch):
        t = time.perf_counter()
        await pred.step_many(events[i : i + batch])
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    ms = np.array(lat) * 1000
    return {
        "batch_size": batch,
        "events": len(events),
        "seconds": round(wall, 3),
        "events_per_second": round(len(events) / wall, 1),
        "batch_latency_ms_p50": round(float(np.percentile(ms, 50)), 3),
        "batch_latency_ms_p95": round(float(np.percentile(ms, 95)), 3),
        "batch_latency_ms_p99": round(float(np.percentile(ms, 99)), 3),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--entities", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--naive-events", type=int, default=5_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        save_artifact(
            SequenceModel(ModelSpec(hidden_size=args.hidden, num_layers=args.layers, horizon=12)),
            Path(tmp),
        )
        art = load_artifact(Path(tmp))
    results = {}
    for name, n, batch in (
        ("naive_per_event", args.naive_events, 1),
        ("batched", args.events, args.batch),
    ):
        ns = f"bench{uuid.uuid4().hex[:8]}"
        store = RedisStateStore.from_url(args.redis_url, ns)
        pred = Predictor(art.model, art.version, store)
        results[name] = await run_path(pred, make_events(args.entities, n), batch)
        keys = [k async for k in store.redis.scan_iter(f"streamer:{ns}:*", count=1000)]
        for i in range(0, len(keys), 1000):
            await store.redis.delete(*keys[i : i + 1000])
        await pred.aclose()
    print(
        json.dumps(
            {
                "benchmark": "predictor (Redis state, no Kafka)",
                "model": {"hidden_size": args.hidden, "layers": args.layers, "horizon": 12},
                "entities": args.entities,
                "results": results,
                "speedup": round(
                    results["batched"]["events_per_second"]
                    / results["naive_per_event"]["events_per_second"],
                    1,
                ),
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
