"""``streamer evaluate`` for a next-event model: every event through a worker, the held-out ones
scored by the predictions made before them, next to baselines computed in the same command.

The file holds every entity's whole history; the last share of each one's events (the model's
``--holdout-fraction``, read from its training summary unless given) is held out. Every event is
streamed in time order through a worker of a namespace of its own, and the prediction it published
for each held-out event's *predecessor* is scored: the event's ``rank`` among the values that
prediction named gives Recall@k, MRR@k and NDCG@k for every cut-off up to the model's ``top_k``.
The baselines (most popular values, the entity's last values, first-order Markov transitions) are
fitted to the events before the held-out ones, as the model was trained. The streamed predictions
are checked against the module over each whole sequence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from streamer.errors import DataError
from streamer.model import SequenceModel
from streamer.model.artifact import load_artifact, read_span
from streamer.schemas import Prediction
from streamer.settings import Settings
from streamer.train.data import check_events, event_rows
from streamer.train.nextevent import (
    CUTOFFS,
    TokenSeries,
    baselines,
    held_out,
    metrics,
    offline_served,
    split_tokens,
)

__all__ = ["evaluate_next"]


def evaluate_next(
    base: Settings,
    data: pd.DataFrame,
    model_dir: Path,
    *,
    fraction: float | None,
    workdir: Path,
    console: Console,
    keep: bool,
    allow_seen: bool,
    label: str | None = None,
) -> dict[str, Any]:
    """(``label``: a 0/1 column marking anomalies: every event of every entity is scored by the
    top-g rule instead, :func:`_anomalies`.)"""
    from streamer.train.evaluate import _stream

    art = load_artifact(model_dir)
    model, spec = art.model, art.spec
    config = art.training.get("config", {})
    fraction = fraction or config.get("holdout_fraction") or 0.2
    categorical = list(spec.categorical)
    truth: dict[str, bool] = {}
    if label is not None:
        if label not in data.columns:
            raise DataError(f"no label column {label!r} in the data")
        truth = {str(k): bool(v) for k, v in data.groupby("unique_id")[label].max().items()}
        data = data.drop(columns=[label])
    df, feats = check_events(data, categorical)
    missing = [f for f in spec.features if f not in feats]
    if missing:
        raise DataError(f"the model needs feature column(s) {', '.join(missing)}")
    series = [s for s in split_tokens(df, categorical, list(spec.features)) if len(s) >= 2]
    if not series:
        raise DataError("no entity has two events to score a next event on")
    starts = [1] * len(series) if label else held_out(series, fraction)
    seen = _seen(model_dir, series, starts, allow_seen, console)
    rows = list(event_rows(df, text=categorical))
    if label:
        console.print(f"streaming {len(rows)} events of {len(series)} entities")
        preds, stream_s = _stream(base, model_dir, False, rows, len(rows), workdir, keep)
        result = _anomalies(model, series, preds, truth, console)
        return result | {
            "seen_in_training": seen,
            "events_streamed": len(rows),
            "stream_seconds": round(stream_s, 1),
        }
    scored = sum(len(s) - a for s, a in zip(series, starts, strict=True))
    console.print(
        f"streaming {len(rows)} events of {len(series)} entities; scoring the last "
        f"{fraction:.0%} of each entity's events ({scored})"
    )
    preds, stream_s = _stream(base, model_dir, False, rows, len(rows), workdir, keep)
    by_entity: dict[str, dict[int, Prediction]] = {}
    for p in preds:
        by_entity.setdefault(p.unique_id, {})[p.step] = p
    ranks, diff = _ranks_streamed(model, series, starts, by_entity)
    k = spec.served_top_k
    cutoffs = tuple(c for c in CUTOFFS if c <= k) or (k,)
    scores = {"streamer": metrics(ranks, cutoffs)}
    column = spec.next or ""
    for name, r in baselines(series, starts, column, spec.vocabulary[column]).items():
        scores[name] = {
            m: v for m, v in r.items() if m == "events" or int(m.split("@")[1]) in cutoffs
        }
    _table(scores, cutoffs, spec.cell, console)
    return {
        "task": "next",
        "predicted_column": column,
        "vocabulary": len(spec.vocabularies[spec.categorical.index(column)]),
        "held_out_fraction": fraction,
        "events_scored": len(ranks),
        "scores": scores,
        "seen_in_training": seen,
        "events_streamed": len(rows),
        "stream_seconds": round(stream_s, 1),
        "max_abs_diff_streamed_vs_offline": diff,
    }


def _anomalies(
    model: SequenceModel,
    series: list[TokenSeries],
    preds: list[Prediction],
    truth: dict[str, bool],
    console: Console,
) -> dict[str, Any]:
    """Two rules on what the worker published, an entity flagged when one of its events (after
    the first) broke it: DeepLog's top g (the event's value was not among the g most likely of
    the prediction before it: its ``rank`` null or above g) and a probability threshold (its
    ``surprise`` above ``-ln p``). Precision, recall and F1 of the flags against the truth, for
    every g and a few p."""
    by_entity: dict[str, dict[int, Prediction]] = {}
    for p in preds:
        by_entity.setdefault(p.unique_id, {})[p.step] = p
    _, diff = _ranks_streamed(model, series, [len(s) for s in series], by_entity)
    k = model.spec.served_top_k
    worst_rank, worst_surprise = [], []
    for s in series:
        after = [by_entity[s.unique_id][t] for t in range(2, len(s) + 1)]
        worst_rank.append(max((q.rank or k + 1 for q in after), default=0))
        worst_surprise.append(max((q.surprise or 0.0 for q in after), default=0.0))
    actual = np.array([truth.get(s.unique_id, False) for s in series])
    rules = {f"top {g}": np.array(worst_rank) > g for g in range(1, k + 1)}
    for p_min in (0.1, 0.05, 0.01, 0.001, 0.0001):
        rules[f"p < {p_min:g}"] = np.array(worst_surprise) > -np.log(p_min)
    table = Table(title=f"anomalous entities: {int(actual.sum())} of {len(series)}, flagged by")
    for c in ("rule", "flagged", "precision", "recall", "F1"):
        table.add_column(c, justify="right")
    scores: dict[str, dict[str, float]] = {}
    for name, flagged in rules.items():
        tp = int((flagged & actual).sum())
        precision = tp / max(int(flagged.sum()), 1)
        recall = tp / max(int(actual.sum()), 1)
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        scores[name] = {
            "flagged": int(flagged.sum()),
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }
        table.add_row(
            name, str(int(flagged.sum())), f"{precision:.4f}", f"{recall:.4f}", f"{f1:.4f}"
        )
    console.print(table)
    best = max(scores, key=lambda r: scores[r]["f1"])
    return {
        "task": "next-anomalies",
        "entities": len(series),
        "anomalous": int(actual.sum()),
        "rules": scores,
        "best_rule": best,
        "best_f1": scores[best]["f1"],
        "max_abs_diff_streamed_vs_offline": diff,
    }


def _ranks_streamed(
    model: SequenceModel,
    series: list[TokenSeries],
    starts: list[int],
    by_entity: dict[str, dict[int, Prediction]],
) -> tuple[np.ndarray, float]:
    """The streamed rank of every held-out event (0: not among the values named before it), and
    the largest difference between a streamed prediction and the module's."""
    ranks: list[int] = []
    diff = 0.0
    for s, a in zip(series, starts, strict=True):
        got = by_entity.get(s.unique_id, {})
        offline = offline_served(model, s)[0]
        k = (offline.shape[1] - 2) // 2
        for t in range(len(s)):
            p = got.get(t + 1)
            if p is None:
                raise DataError(f"no prediction for event {t + 1} of {s.unique_id}")
            want = offline[t]
            diff = max(diff, float(np.max(np.abs(np.asarray(p.values) - want[k : 2 * k]))))
            if p.surprise is not None:
                diff = max(diff, abs(p.surprise - want[-2]))
            if t >= a:
                ranks.append(p.rank or 0)
    return np.asarray(ranks, np.int64), diff


def _seen(
    model_dir: Path,
    series: list[TokenSeries],
    starts: list[int],
    allow_seen: bool,
    console: Console,
) -> int | None:
    """Entities whose held-out events the model was trained on (it saw more of their events than
    come before the held-out ones); refused unless ``allow_seen``."""
    span = read_span(model_dir)
    if span is None:
        console.print("[yellow]warning:[/] the artifact does not say what it was trained on")
        return None
    trained = dict(zip(span["unique_id"], span["points"], strict=True))
    seen = [
        s.unique_id for s, a in zip(series, starts, strict=True) if trained.get(s.unique_id, 0) > a
    ]
    if seen and not allow_seen:
        raise DataError(
            f"the model was trained on the held-out events of {len(seen)} of the {len(series)} "
            f"entities scored here (e.g. {seen[0]}): train with --holdout-fraction on this "
            "file, or pass --allow-seen to score it anyway"
        )
    if seen:
        console.print(
            f"[bold red]warning: {len(seen)} entities' held-out events were trained on[/]"
        )
    return len(seen)


def _table(
    scores: dict[str, dict[str, float]], cutoffs: tuple[int, ...], cell: str, console: Console
) -> None:
    """A row per measure and cut-off, a column per model."""
    names = {
        "streamer": f"streamer ({cell})",
        "popular": "most popular",
        "last": "entity's last",
        "markov": "Markov",
    }
    n = int(scores["streamer"]["events"])
    table = Table(title=f"next event: {n:,} held-out events, streamed predictions")
    table.add_column("measure")
    for name in scores:
        table.add_column(names.get(name, name), justify="right")
    for m, label in (("recall", "Recall"), ("mrr", "MRR"), ("ndcg", "NDCG")):
        for k in cutoffs:
            table.add_row(f"{label}@{k}", *[f"{s[f'{m}@{k}']:.4f}" for s in scores.values()])
    console.print(table)
