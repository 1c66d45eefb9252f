"""Entity-steps per second of the predictor and of the bare cell, on CUDA and on the CPU, same run.

For each batch size (1k to 64k distinct entities, one event each: one wave), with the make-bench
model (2-layer LSTM, H=64, float32 states) against the in-memory store (no Redis, no Kafka):

- ``predictor``: the whole batch path above the store: fence, scaling, staging to the device in
  one copy, the cell, the head, back in one copy, the state codec both ways, the kept outputs;
- ``cell``: ``model.step`` alone on states already on the device (fused and per-layer kernels),
  timed with the device synchronised, the compute ceiling of the path.

Prints one JSON object (also written to ``$OUT/gpu_check.json`` when ``OUT`` is set). Run by
``bench/gpu_check.sh`` after the equality tests; it runs on the CPU alone where there is no GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from typing import Any

import numpy as np
import torch

from streamer.model import ModelSpec, SequenceModel
from streamer.schemas import Event
from streamer.serve.predictor import Predictor
from streamer.state import MemoryStateStore


def model(hidden: int, layers: int) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(ModelSpec(hidden_size=hidden, num_layers=layers, horizon=12)).eval()


def events(n: int, round_: int) -> list[Event]:
    return [Event(f"e{i}", f"t{round_}", float(i % 97), (), i % 8, round_) for i in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


async def time_predictor(
    m: SequenceModel, device: torch.device, batch: int, rounds: int, fused: int
) -> dict[str, float]:
    pred = Predictor(
        m.to(device), "bench", MemoryStateStore(), device=device, fused_cell_from=fused
    )
    await pred.process(events(batch, 0))  # warm: every entity has a state from here on
    took = []
    for r in range(1, rounds + 1):
        evs = events(batch, r)
        started = time.perf_counter()
        report = await pred.process(evs)
        took.append(time.perf_counter() - started)
        assert report.applied == batch
    best, median = min(took), float(np.median(took))
    return {
        "steps_per_s": batch / median,
        "best_steps_per_s": batch / best,
        "batch_ms": median * 1e3,
    }


@torch.inference_mode()
def time_cell(
    m: SequenceModel, device: torch.device, batch: int, fused: bool, rounds: int
) -> dict[str, float]:
    m = m.to(device)
    spec = m.spec
    x = torch.randn(batch, spec.input_size, device=device)
    h, c = m.rnn.zero_state(batch, device)
    for _ in range(3):
        m.step(x, (h, c), fused)
    sync(device)
    started = time.perf_counter()
    for _ in range(rounds):
        _, (h, c) = m.step(x, (h, c), fused)
    sync(device)
    each = (time.perf_counter() - started) / rounds
    return {"steps_per_s": batch / each, "call_ms": each * 1e3}


async def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,4096,16384,65536")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cpu-rounds", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    m = model(args.hidden, args.layers)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        devices.insert(0, torch.device("cuda"))
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "model": {"cell": "lstm", "hidden": args.hidden, "layers": args.layers, "horizon": 12},
        "state_dtype": "float32",
        "runs": [],
    }
    for dev in devices:
        rounds = args.rounds if dev.type == "cuda" else args.cpu_rounds
        for b in sizes:
            row: dict[str, Any] = {"device": dev.type, "batch": b}
            # On CUDA the fused (cuDNN) kernel serves every wave by default; on the CPU, per layer.
            row["predictor"] = await time_predictor(
                m, dev, b, rounds, 1 if dev.type == "cuda" else 0
            )
            row["cell_fused"] = time_cell(m, dev, b, True, rounds * 4)
            row["cell_per_layer"] = time_cell(m, dev, b, False, rounds * 4)
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
    by = {(r["device"], r["batch"]): r for r in result["runs"]}
    if devices[0].type == "cuda":
        rate = {k: r["predictor"]["steps_per_s"] for k, r in by.items()}
        result["cuda_over_cpu_predictor"] = {
            b: round(rate[("cuda", b)] / rate[("cpu", b)], 2) for b in sizes
        }
    return result


if __name__ == "__main__":
    out = asyncio.run(main())
    text = json.dumps(out, indent=2)
    print(text)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_check.json"), "w") as f:
            f.write(text)
