"""Benchmark: what a model's kind costs the batch path, same run: a plain forecaster, the same with
prediction intervals, with level and seasonal components (and intervals), ensembles of members
of the same shape (with intervals), and next-event models of the same core over vocabularies of
1,000 and 10,000 values (top 10, surprise and rank; at 10,000 a two-level softmax, also with
``groups_exact``, and one softmax).

    python bench/model_kinds.py [--entities N] [--batches N] [--members 3,5] [--hidden 32]
                                [--season 12] [--vocabularies 1000,10000]

Batches of distinct entities go through the worker's batch path without its sockets: the events'
JSON decoded (:class:`~streamer.serve.pipeline.BatchHandler`), the predictor against the
in-memory store, the predictions encoded (no Kafka, no Redis: what the kinds change), on one torch
thread. Prints one JSON document: microseconds of CPU per event for every kind, of the whole path
and of the predictor alone (the median of the rounds, the kinds interleaved in every round), and
each kind's ratio to the plain model. Not a test: compare the figures of one run, not across runs.
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
import orjson
import torch
from throughput import next_model  # bench/ is the script's directory, first on sys.path

from streamer.model import ModelSpec, SequenceModel
from streamer.model.ensemble import merge
from streamer.model.vocab import groups_for
from streamer.schemas import Event
from streamer.serve.allocator import retain_freed_memory
from streamer.serve.pipeline import BatchHandler, RawMessage
from streamer.serve.predictor import Predictor
from streamer.settings import Settings
from streamer.state.memory import MemoryStateStore


def _intervals(spec: ModelSpec) -> ModelSpec:
    k = spec.horizon
    lo = tuple(tuple(-1.0 - 0.1 * j for j in range(k)) for _ in range(2))
    hi = tuple(tuple(1.0 + 0.1 * j for j in range(k)) for _ in range(2))
    return replace(spec, levels=(80, 95), interval_lo=lo, interval_hi=hi)


def kinds(
    hidden: int, layers: int, horizon: int, members: list[int], season: int, vocabularies: list[int]
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
    two = single(0)  # (hourly data's day and week, as `--season 24,168` keeps them)
    two.spec = replace(_intervals(two.spec), season=24, season2=168, smoothing=(0.3, 0.2, 0.3))
    out["seasonal components (24 and 168), intervals"] = two
    for m in members:
        ens = merge([single(s) for s in range(m)])
        ens.spec = _intervals(ens.spec)
        out[f"ensemble of {m}, intervals"] = ens
    for v in vocabularies:
        two_level = groups_for(v + 1)
        heads = [(two_level, False), (two_level, True)] if two_level else []
        for groups, exact in [*heads, (0, False)]:
            head = (f", {groups} groups" if groups else (", one softmax" if two_level else "")) + (
                ", exact" if exact else ""
            )
            model = next_model(v, hidden, layers, embedding=hidden, groups=groups, exact=exact)
            out[f"next event, {v:,} values, top 10{head}"] = model
    return out


def messages(model: SequenceModel, batch: list[Event], seed: int) -> list[RawMessage]:
    """The batch's events as the worker receives them: JSON, keyed by entity (a next-event
    model's carry an item drawn from its vocabulary instead of y)."""
    spec = model.spec
    rng = np.random.default_rng(seed)
    out = []
    for e in batch:
        body: dict[str, object] = {"unique_id": e.unique_id, "ds": e.ds}
        if spec.task == "next":
            body["item"] = f"v{int(rng.integers(0, len(spec.vocabularies[0]) + 50))}"
        else:
            body["y"] = e.y
        out.append(RawMessage(e.unique_id.encode(), orjson.dumps(body), e.partition, e.offset))
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
    retain_freed_memory(0 if args.glibc_defaults else Settings().retain_memory_mb)
    members = [int(m) for m in args.members.split(",") if m]
    vocabularies = [int(v) for v in args.vocabularies.split(",") if v]
    models = kinds(args.hidden, args.layers, args.horizon, members, args.season, vocabularies)
    if args.only:  # (one kind alone: a worker serves one model, its allocator serves it alone)
        models = {n: m for n, m in models.items() if args.only in n}
    work = batches(args.entities, args.batches + 2)
    handlers = {
        name: BatchHandler(Predictor(m, f"v{i}", MemoryStateStore()))
        for i, (name, m) in enumerate(models.items())
    }
    alone = {  # the predictor alone, on a store of its own
        name: Predictor(m, f"v{i}", MemoryStateStore())
        for i, (name, m) in enumerate(models.items())
    }
    raw = {
        name: [messages(models[name], b, seed) for seed, b in enumerate(work)] for name in models
    }
    for name, h in handlers.items():  # warm-up: states exist, code paths are hot
        for b in raw[name][:2]:
            (await h.handle(b)).encoded()
            await alone[name].process(h.decode(b)[0])
    cpu: dict[str, list[float]] = {name: [] for name in handlers}
    step: dict[str, list[float]] = {name: [] for name in handlers}
    for r in range(2, len(work)):  # every round: one batch through every kind, interleaved
        for name, h in handlers.items():
            b = raw[name][r]
            started = time.process_time()
            outcome = await h.handle(b)
            outcome.encoded()
            cpu[name].append((time.process_time() - started) / len(b) * 1e6)
            assert outcome.report.applied == len(b), outcome.dead_letters[:1]
        for name, p in alone.items():  # the predictor alone, on the batch's columns
            cols, _ = handlers[name].decode(raw[name][r])
            started = time.process_time()
            await p.process(cols)
            step[name].append((time.process_time() - started) / len(cols) * 1e6)
    per_event = {name: round(statistics.median(v), 2) for name, v in cpu.items()}
    predictor = {name: round(statistics.median(v), 2) for name, v in step.items()}
    return {
        "what": "CPU microseconds per event of the batch path (JSON decoded, Predictor.process "
        "with the in-memory store, predictions encoded), 1 torch thread; predictor: "
        "Predictor.process alone",
        "predictor_cpu_us_per_event": predictor,
        "model": {"cell": "lstm", "hidden_size": args.hidden, "layers": args.layers},
        "horizon": args.horizon,
        "entities_per_batch": args.entities,
        "rounds": args.batches,
        "cpu_us_per_event": per_event,
        "ratio_to_plain": {n: round(v / per_event["plain"], 2) for n, v in per_event.items()}
        if "plain" in per_event
        else None,
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
    ap.add_argument(
        "--vocabularies", default="1000,10000", help="next-event models' vocabulary sizes"
    )
    ap.add_argument("--only", default="", help="only the kinds whose names contain this")
    ap.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="leave the C allocator as it is (the worker keeps freed memory: retain_memory_mb)",
    )
    print(json.dumps(asyncio.run(run(ap.parse_args())), indent=2))


if __name__ == "__main__":
    main()
