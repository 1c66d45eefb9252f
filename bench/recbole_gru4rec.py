"""The peer on MovieLens-100k: RecBole 1.2.1's GRU4Rec on streamer's split, full ranking.

Not part of the project or its tests: RecBole pins old numpy and ray, so it goes in a
virtualenv of its own that reads this project's torch, numpy and pandas::

    python -m venv --system-site-packages /tmp/peer/venv
    echo "$(~/.cache/streamer/venv/bin/python -c 'import site; print(site.getsitepackages()[0])')" \\
        > /tmp/peer/venv/lib/python3.11/site-packages/zz_streamer.pth
    /tmp/peer/venv/bin/pip install recbole==1.2.1 --no-deps
    /tmp/peer/venv/bin/pip install tensorboard texttable tabulate thop psutil setproctitle
    streamer dataset movielens-100k --out ml.csv
    /tmp/peer/venv/bin/python bench/recbole_gru4rec.py ml.csv --work /tmp/peer

The split is ``streamer evaluate``'s: per user, in time order (ties in file order), the last
``max(1, round(0.2 n))`` ratings are test targets, each predicted from every earlier rating
(RecBole's own ratio split rounds otherwise: 19,438 targets instead of 20,000, so its split
function is replaced); the last training rating of each user validates (picks the epoch).
GRU4Rec's defaults (embedding 64, hidden 128, dropout 0.3), cross-entropy over all items, Adam
1e-3, batches of 256, the last 50 ratings of history (RecBole's default; 200 cost four times as
long on one CPU thread), one torch thread. Items already rated are not masked (as in streamer's
evaluation). Prints RecBole's test metrics and the wall times.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import pandas as pd

# RecBole 1.2.1 uses numpy aliases that numpy 2 removed (np.bool exists again: left alone)
for _name, _alias in {
    "float": float,
    "int": int,
    "long": int,
    "complex_": complex,
    "float_": np.float64,
    "unicode_": np.str_,
    "object": object,
}.items():
    if not hasattr(np, _name):
        setattr(np, _name, _alias)

import torch  # noqa: E402

torch.set_num_threads(1)
_load = torch.load


def _load_with_objects(*args: object, **kw: object) -> object:
    """RecBole's checkpoints hold its Config object (torch >= 2.6 loads weights only)."""
    kw.setdefault("weights_only", False)
    return _load(*args, **kw)  # type: ignore[arg-type]


torch.load = _load_with_objects  # type: ignore[assignment]

from recbole.config import Config  # type: ignore[import-not-found]  # noqa: E402
from recbole.data import create_dataset, data_preparation  # type: ignore[import-not-found]  # noqa: E402
from recbole.data.dataset import Dataset  # type: ignore[import-not-found]  # noqa: E402
from recbole.model.sequential_recommender import GRU4Rec  # type: ignore[import-not-found]  # noqa: E402
from recbole.trainer import Trainer  # type: ignore[import-not-found]  # noqa: E402
from recbole.utils import init_logger, init_seed  # type: ignore[import-not-found]  # noqa: E402

NAME = "ml100k_streamer"


def atomic_file(csv: Path, work: Path) -> None:
    """streamer's events (``unique_id, ds, item``) as RecBole's interactions, in file order."""
    df = pd.read_csv(csv)
    seconds = (pd.to_datetime(df.ds) - pd.Timestamp("1970-01-01")) // pd.Timedelta("1s")
    out = pd.DataFrame(
        {"user_id:token": df.unique_id, "item_id:token": df.item, "timestamp:float": seconds}
    )
    (work / NAME).mkdir(parents=True, exist_ok=True)
    out.to_csv(work / NAME / f"{NAME}.inter", sep="\t", index=False)


def streamers_split(valid: int) -> None:
    """Per user RecBole makes ``n - 1`` targets (events 2..n); the last ``max(1, round(0.2
    n))`` test, the ``valid`` before them validate."""

    def split(self: object, tot: int, ratios: object) -> list[int]:
        n = tot + 1
        k = min(max(1, round(0.2 * n)), tot)
        v = min(valid, tot - k)
        return [tot - k - v, tot - k]

    Dataset._calcu_split_ids = split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("events", type=Path, help="streamer dataset movielens-100k's CSV")
    ap.add_argument("--work", type=Path, default=Path("/tmp/peer"))
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--history", type=int, default=50, help="earlier ratings a prediction sees")
    a = ap.parse_args()
    atomic_file(a.events, a.work / "data")
    streamers_split(valid=1)
    config = Config(
        model="GRU4Rec",
        dataset=NAME,
        config_dict={
            "data_path": str(a.work / "data"),
            "checkpoint_dir": str(a.work / "saved"),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "MAX_ITEM_LIST_LENGTH": a.history,
            "eval_args": {
                "split": {"RS": [0.8, 0.0, 0.2]},
                "order": "TO",
                "group_by": "user",
                "mode": "full",
            },
            "metrics": ["Recall", "MRR", "NDCG"],
            "topk": [1, 5, 10],
            "valid_metric": "MRR@10",
            "loss_type": "CE",
            "train_neg_sample_args": None,
            "epochs": a.epochs,
            "stopping_step": 3,
            "train_batch_size": 256,
            "eval_batch_size": 4096,
            "use_gpu": False,
            "seed": 2020,
            "reproducibility": True,
            "show_progress": False,
            "worker": 0,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    log = logging.getLogger()
    train, valid, test = data_preparation(config, create_dataset(config))
    log.info("test targets: %d", len(test._dataset.inter_feat))
    model = GRU4Rec(config, train._dataset).to(config["device"])
    trainer = Trainer(config, model)
    started = time.monotonic()
    trainer.fit(train, valid, saved=True, show_progress=False)
    trained = time.monotonic() - started
    started = time.monotonic()
    result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    log.info(
        "train %.0f s, test %.1f s: %s",
        trained,
        time.monotonic() - started,
        "  ".join(f"{k}={float(v):.4f}" for k, v in result.items()),
    )


if __name__ == "__main__":
    main()
