"""Benchmark: what a model's kind costs the batch path, same run: a plain forecaster, the same with
prediction intervals, with level and seasonal components (and intervals), and ensembles of members
of the same shape (with intervals).

    python bench/model_kinds.py [--entities N] [--batches N] [--members 3,5] [--hidden 32]
                                [--season 12]

The predictor steps batches of distinct entities against the in-memory store (no Kafka, no Redis:
the model's share of a batch, which is what the kinds change), on one torch thread. Prints one
JSON document: microseconds of CPU per event for every kind (the median of the rounds, the kinds
interleaved in every round) and each kind's ratio to the plain model. Not a test: compare the
figures of one run, not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from streamer.model import ModelSpec, SequenceModel
from streamer.model.ensemble import merge
from streamer.schemas import Event
from streamer.serve.predictor import Predictor
from streamer.state.memory import MemoryStateStore


def _intervals(spec: ModelSpec) -> ModelSpec:
    k = spec.horizon
    lo = tuple(tuple(-1.0 - 0.1 * j for j in range(k)) for _ in range(2))
    hi = tuple(tuple(1.0 + 0.1 * j for j in range(k)) for _ in range(2))
    return replace(spec, levels=(80, 95), interval_lo=lo, interval_hi=hi)


def kinds(
    hidden: int, layers: int, horizon: int, members: list[int], season: int
) -> dict[str, SequenceModel]:
    def single(seed: int) -> SequenceModel:
        torch.manual_seed(seed)
        spec = ModelSpec(hidden_size=hidden, num_layers=layers, horizon=horizon)
        return SequenceModel(spec).eval()

    plain = single(0)
    with_intervals = single(0)
    with_intervals.spec = _intervals(with_intervals.spec)
    out = {"plain": plain, "intervals": with_intervals}
    components = single(0)
    components.spec = replace(_intervals(components.spec), season=season, smoothing=(0.3, 0.2))
    out[f"seasonal components ({season}), intervals"] = components
    for m in members:
        ens = merge([single(s) for s in range(m)])
        ens.spec = _intervals(ens.spec)
        out[f"ensemble of {m}, intervals"] = ens
    return out


def batches(entities: int, n: int, seed: int = 0) -> list[list[Event]]:
    """``n`` batches, each of every entity once (offsets counting up per partition)."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n):
        ys = rng.normal(100, 10, entities).tolist()
        out.append(
            [Event(f"e{e}", f"t{b}", y, (), e % 4, b * entities + e) for e, y in enumerate(ys)]
        )
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(1)
    members = [int(m) for m in args.members.split(",") if m]
    models = kinds(args.hidden, args.layers, args.horizon, members, args.season)
    work = batches(args.entities, args.batches + 2)
    predictors = {
        name: Predictor(m, f"v{i}", MemoryStateStore())
        for i, (name, m) in enumerate(models.items())
    }
    for p in predictors.values():  # warm-up: states exist, code paths are hot
        for b in work[:2]:
            await p.process(b)
    cpu: dict[str, list[float]] = {name: [] for name in predictors}
    for b in work[2:]:  # every round: one batch through every kind, interleaved
        for name, p in predictors.items():
            started = time.process_time()
            report = await p.process(b)
            cpu[name].append((time.process_time() - started) / len(b) * 1e6)
            assert report.applied == len(b)
    per_event = {name: round(statistics.median(v), 2) for name, v in cpu.items()}
    return {
        "what": "CPU microseconds per event of Predictor.process, in-memory store, 1 torch thread",
        "model": {"cell": "lstm", "hidden_size": args.hidden, "layers": args.layers},
        "horizon": args.horizon,
        "entities_per_batch": args.entities,
        "rounds": args.batches,
        "cpu_us_per_event": per_event,
        "ratio_to_plain": {n: round(v / per_event["plain"], 2) for n, v in per_event.items()},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=1024, help="entities per batch")
    ap.add_argument("--batches", type=int, default=30, help="rounds measured")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--horizon", type=int, default=12)
    ap.add_argument("--members", default="3,5", help="ensemble sizes, comma-separated")
    ap.add_argument("--season", type=int, default=12, help="steps of the components' season")
    print(json.dumps(asyncio.run(run(ap.parse_args())), indent=2))


if __name__ == "__main__":
    main()
