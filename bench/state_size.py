"""Bytes per entity at rest: the demo panel through a worker at full speed and at a slow rate, on
one Redis and on a Redis Cluster, measured after the worker stopped.

    python bench/state_size.py [--epochs 5] [--slow-rate 200] [--slow-events 3000]

Starts its own Kafka and Redis (ports 29092, 26379, cluster 27000-27002) unless ``--bootstrap``
and ``--redis-url`` name others; prints JSON (also written to ``build/bench/``). Per run: the mean
record (``STRLEN``), the mean ``MEMORY USAGE`` of a state key (the record, the key, Redis's
entry and allocator rounding), Redis's ``used_memory`` growth per entity, and what is left in
the outbox (single Redis: a sorted set per partition, emptied as offsets commit).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import (  # noqa: E402
    CLUSTER_PORTS,
    bench_services,
    save,
)
from streamer.model.artifact import load_artifact, save_artifact  # noqa: E402
from streamer.ops.local import namespaced, stream_through, worker_process  # noqa: E402
from streamer.settings import Settings  # noqa: E402
from streamer.train.data import demo_panel, event_rows  # noqa: E402
from streamer.train.training import TrainConfig, train  # noqa: E402


async def measure(urls: list[str], model_name: str, sample: int = 300) -> dict[str, Any]:
    """The states of ``model_name`` on every node: their number, mean record and key memory, and
    the outbox keys left."""
    records, usage, states, outbox, outbox_bytes = 0, 0, 0, 0, 0
    sampled = 0
    for url in urls:
        r = aioredis.Redis.from_url(url)
        try:
            async for key in r.scan_iter(match=f"streamer:{model_name}:*", count=1000):
                kind = await r.type(key)
                if kind == b"string":
                    states += 1
                    records += await r.strlen(key)
                    if sampled < sample:
                        usage += int(await r.memory_usage(key) or 0)
                        sampled += 1
            async for key in r.scan_iter(match=f"streamer-outbox:{model_name}:*", count=1000):
                outbox += 1
                outbox_bytes += int(await r.memory_usage(key) or 0)
        finally:
            await r.aclose()
    return {
        "entities": states,
        "record_bytes_mean": round(records / max(states, 1), 1),
        "memory_usage_per_key": round(usage / max(sampled, 1), 1),
        "outbox_keys": outbox,
        "outbox_bytes": outbox_bytes,
    }


async def used_memory(urls: list[str]) -> int:
    total = 0
    for url in urls:
        r = aioredis.Redis.from_url(url)
        try:
            total += int((await r.info("memory"))["used_memory"])
        finally:
            await r.aclose()
    return total


async def one_run(
    args: argparse.Namespace, model: Path, cluster: bool, rate: float | None, tmp: Path
) -> dict[str, Any]:
    df = demo_panel()
    rows = list(event_rows(df))
    if rate is not None:
        rows = rows[: args.slow_events]
    run = (
        f"size-{'cluster' if cluster else 'redis'}-{'slow' if rate else 'full'}-{id(rows) % 10**6}"
    )
    url = f"redis://127.0.0.1:{CLUSTER_PORTS[0]}/0" if cluster else args.redis_url
    urls = [f"redis://127.0.0.1:{p}/0" for p in CLUSTER_PORTS] if cluster else [args.redis_url]
    base = Settings.model_validate(
        {"kafka": {"bootstrap_servers": args.bootstrap}, "redis": {"url": url, "cluster": cluster}}
    )
    settings = namespaced(base, run, model)
    before = await used_memory(urls)
    with worker_process(settings, tmp / f"{run}.log") as worker:
        seconds = await stream_through(
            settings,
            rows,
            settings.topics.predictions,
            len(rows),
            worker,
            lambda _: None,
            rate=rate,
        )
    # (the worker stopped: its last commits went through, the outbox emptied what they covered)
    got = await measure(urls, run)
    got["used_memory_per_entity"] = round((await used_memory(urls) - before) / got["entities"], 1)
    return {
        "store": "redis-cluster" if cluster else "redis",
        "pace": f"{rate:g} events/s" if rate else "full speed",
        "events": len(rows),
        "seconds": round(seconds, 1),
        **got,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = tmp / "model"
        cfg = TrainConfig(horizon=12, epochs=args.epochs, holdout=24)
        save_artifact(train(demo_panel(), cfg).model, model)
        spec = load_artifact(model).spec
        runs = []
        for cluster in (False, True):
            for rate in (None, args.slow_rate):
                runs.append(await one_run(args, model, cluster, rate, tmp))
                print(runs[-1], file=sys.stderr)
    return {
        "benchmark": "state_size",
        "model": {
            "cell": spec.cell,
            "layers": spec.num_layers,
            "hidden_size": spec.hidden_size,
            "horizon": spec.horizon,
            "state_dtype": "float32",
        },
        "runs": runs,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", help="use this Kafka instead of starting one")
    ap.add_argument("--redis-url", help="use this Redis (it is flushed!) instead of starting one")
    ap.add_argument("--keep-services", action="store_true", help="leave Kafka and Redis running")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs of the demo model")
    ap.add_argument("--slow-rate", type=float, default=200.0, help="events/s of the slow run")
    ap.add_argument("--slow-events", type=int, default=3000, help="events of the slow run")
    args = ap.parse_args(argv)
    args.kinds = ["streamer-cluster"]  # (bench_services starts the cluster for this kind)
    return args


if __name__ == "__main__":
    import json

    args = parse()
    with bench_services(args):
        doc = asyncio.run(main(args))
    print(json.dumps(doc, indent=2))
    print(f"saved {save(doc, 'state-size')}", file=sys.stderr)
