"""``streamer evaluate``: score a model on what a worker publishes, not on an offline forward pass.

The data is replayed through Kafka to a worker of its own (its own topics, group and state keys, see
:mod:`streamer.ops.local`), the predictions are read back from the output topic and scored:

- a **forecaster**: the last ``horizon`` points of every entity are held out; the history before
  them is streamed, and the forecast the worker published for each entity's last history event
  (the forecast origin) is scored against the held-out points with MASE (scaled by the in-sample
  seasonal naive error) and sMAPE, per entity and overall (the mean over entities), next to the
  naive (last value) and seasonal naive (last season) forecasts from the same history; a model
  with prediction intervals is also scored on them: the share of held-out points inside each
  level's interval (coverage) and the scaled interval score (MSIS, scaled like MASE);
- a **step classifier**: every event is streamed (without the label); the probabilities after
  each entity's last event are scored against its label (accuracy, log loss), and the accuracy
  after each step shows how early the prediction becomes right;
- a **window model**: every closed window's prediction is scored against the label of the event
  that closed it.

Every streamed prediction is also compared with the offline model over the same series
(:func:`streamer.train.offline.offline_predict`, :func:`streamer.train.offline.offline_windows`): the
command reports the largest difference and fails when it exceeds ``tolerance`` (by default 1e-4,
times the longest sequence's length over 100 beyond 100 events: the stream steps one event at a
time and the offline pass runs the fused sequence kernel, whose float32 roundings differ, and the
difference is carried and grows along the sequence).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamer.errors import DataError, StreamerError
from streamer.model import SequenceModel
from streamer.model.artifact import load_artifact
from streamer.ops.local import namespaced, remove_run, stream_through, worker_process
from streamer.schemas import Prediction
from streamer.settings import Settings
from streamer.train.baselines import Forecast, classical_forecasts
from streamer.train.checks import check_seen
from streamer.train.data import event_rows, split_series
from streamer.train.offline import (
    offline_predict,
    offline_windows,
    series_inputs,
    window_bounds,
)
from streamer.train.scores import (
    forecast_scores,
    infer_season,
    interval_scores,
    log_loss,
    naive_forecasts,
)

__all__ = ["run_evaluate", "write_json"]


def _stream(
    base: Settings,
    model_dir: Path,
    windows: bool,
    rows: list[dict[str, object]],
    expected: int,
    workdir: Path,
    keep: bool,
) -> tuple[list[Prediction], float]:
    """Stream ``rows`` through a worker of a namespace of its own and collect the first
    ``expected`` predictions; its topics and keys are deleted afterwards unless ``keep``."""
    run = f"eval{int(time.time() * 1000)}"
    settings = namespaced(base, run, model_dir)
    try:
        return _stream_run(settings, windows, rows, expected, workdir / f"{run}.worker.log")
    finally:
        if keep:
            print(f"kept the run's topics ({run}.*) and Redis keys (model {run})", file=sys.stderr)
        else:
            asyncio.run(remove_run(settings))


def _stream_run(
    settings: Settings,
    windows: bool,
    rows: list[dict[str, object]],
    expected: int,
    log_path: Path,
) -> tuple[list[Prediction], float]:
    topic = settings.topics.windows if windows else settings.topics.predictions
    log_path.parent.mkdir(parents=True, exist_ok=True)
    got: list[Prediction] = []
    with (
        worker_process(settings, log_path) as worker,
        Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not sys.stderr.isatty(),
        ) as prog,
    ):
        sent = prog.add_task("events sent", total=len(rows))
        scored = prog.add_task("predictions", total=expected)
        seconds = asyncio.run(
            stream_through(
                settings,
                rows,
                topic,
                expected,
                worker,
                got.append,
                on_sent=lambda n: prog.update(sent, completed=n),
                on_tick=lambda: prog.update(scored, completed=len(got)),
            )
        )
    return got, seconds


def run_evaluate(
    base: Settings,
    data: pd.DataFrame,
    model_dir: Path,
    *,
    label: str | None = None,
    season: int | None = None,
    workdir: Path,
    tolerance: float | None = None,
    console: Console | None = None,
    keep: bool = False,
    allow_seen: bool = False,
    baselines: bool = False,
    holdout_fraction: float | None = None,
    origins: int = 1,
) -> dict[str, Any]:
    """Stream ``data`` through a worker serving ``model_dir`` and score what it published.
    Returns the results (also what ``--json`` writes). The run's topics and keys are deleted
    afterwards unless ``keep``. A model trained on what would be scored (the held-out points of a
    forecaster, the sequences of a classifier) is refused unless ``allow_seen``. ``baselines``:
    AutoETS and Theta (statsforecast) beside the naive forecasts of a forecaster. ``origins``:
    a forecaster's forecasts published at that many origins, a horizon apart, are scored over the
    last ``origins`` horizons of every entity (a rolling-origin evaluation)."""
    console = console or Console(stderr=True)
    art = load_artifact(model_dir)
    model, spec = art.model, art.spec
    if origins != 1 and spec.task != "forecast":
        raise DataError("--origins is for forecasters: a classifier is scored on every sequence")
    if spec.task == "next":
        from streamer.train.evaluate_next import evaluate_next

        started = time.monotonic()
        result = evaluate_next(
            base,
            data,
            model_dir,
            fraction=holdout_fraction,
            workdir=workdir,
            console=console,
            keep=keep,
            allow_seen=allow_seen,
            label=label,
        )
        return _checked(result, art, data, tolerance, started)
    if spec.task == "classify" and not label:
        raise DataError("a classifier is scored against a label column: pass --label")
    started = time.monotonic()
    feats = list(spec.features)
    missing = [f for f in feats if f not in data.columns]
    if missing:
        raise DataError(f"the model needs feature column(s) {', '.join(missing)}")
    seen = check_seen(model_dir, data, spec, label, allow_seen, console, origins)
    if spec.task == "forecast":
        result = _evaluate_forecaster(
            base, data, model, model_dir, season, workdir, console, keep, baselines, origins
        )
    else:
        result = _evaluate_classifier(
            base, data, model, model_dir, label or "", workdir, console, keep
        )
    result["seen_in_training"] = seen
    return _checked(result, art, data, tolerance, started)


def _checked(
    result: dict[str, Any], art: Any, data: pd.DataFrame, tolerance: float | None, started: float
) -> dict[str, Any]:
    """The result with the model and wall time, once its streamed predictions are found equal to
    the offline model's (an error if they are not)."""
    spec = art.spec
    result["model_version"] = art.version
    result["model"] = {k: spec.to_dict()[k] for k in ("cell", "hidden_size", "num_layers")}
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    if tolerance is None:
        longest = int(data.groupby("unique_id").size().max())
        tolerance = 1e-4 * max(1.0, longest / 100)
    result["tolerance"] = tolerance
    diff = result["max_abs_diff_streamed_vs_offline"]
    result["streamed_equals_offline"] = bool(diff <= tolerance)
    if not result["streamed_equals_offline"]:
        raise StreamerError(
            f"streamed predictions differ from the offline model's by up to {diff:.3g} "
            f"(tolerance {tolerance:g})"
        )
    return result


def _evaluate_forecaster(
    base: Settings,
    data: pd.DataFrame,
    model: SequenceModel,
    model_dir: Path,
    season: int | None,
    workdir: Path,
    console: Console,
    keep: bool,
    baselines: bool,
    origins: int = 1,
) -> dict[str, Any]:
    k = model.spec.horizon
    m = season or infer_season(data)
    held = k * origins  # the last origin's forecast reaches the end of the data
    sizes = data.groupby("unique_id")["y"].transform("size")
    data = data[sizes > held + 1]
    if data.empty:
        raise DataError(f"no entity has more than {held + 1} points to hold {held} out")
    from_end = data.groupby("unique_id").cumcount(ascending=False)
    streamed = data[from_end >= k]  # (the points before the last origin)
    rows = list(event_rows(streamed))
    console.print(
        f"streaming {len(rows)} events of {streamed['unique_id'].nunique()} entities; the last "
        f"{held} points of each are held out (season {m}"
        + (f"; {origins} forecast origins, {k} points apart)" if origins > 1 else ")")
    )
    levels = model.spec.levels
    # the classical methods fitted again at each origin, on the points before it
    classical = (
        [
            classical_forecasts(data[from_end >= held - i * k], k, m, console, levels)
            for i in range(origins)
        ]
        if baselines
        else []
    )
    preds, stream_s = _stream(base, model_dir, False, rows, len(rows), workdir, keep)
    size = data.groupby("unique_id").size()
    wanted = {(str(u), int(n) - held + i * k) for u, n in size.items() for i in range(origins)}
    at: dict[tuple[str, int], Prediction] = {}
    for p in preds:
        if (p.unique_id, p.step) in wanted:
            at[(p.unique_id, p.step)] = p
    feats = list(model.spec.features)
    per_entity: dict[str, dict[str, float]] = {}
    diff = 0.0
    for s_hist, s_all in zip(split_series(streamed, feats), split_series(data, feats), strict=True):
        offline = offline_predict(model, s_hist)[0]
        starts = series_inputs(s_hist, model.spec)[1] if model.spec.season else None
        rows_of: list[dict[str, float]] = []
        for i in range(origins):
            n = len(s_all.y) - held + i * k  # the points seen at this origin
            origin = at.get((s_hist.unique_id, n))
            if origin is None:
                raise StreamerError(f"{s_hist.unique_id}: no prediction for its event {n}")
            served = np.asarray(origin.served)  # (the forecast, then its intervals' bounds)
            diff = max(
                diff,
                float(
                    np.max(np.abs(served - offline[n - 1]) / np.maximum(1, np.abs(offline[n - 1])))
                ),
            )
            history, actual = s_all.y[:n], s_all.y[n : n + k]
            naive, snaive = naive_forecasts(history, k, m)
            bounds = {
                v: (np.asarray(lo), np.asarray(hi)) for v, (lo, hi) in origin.intervals.items()
            }
            forecasts = [
                ("model", Forecast(np.asarray(origin.values), bounds)),
                ("naive", Forecast(naive)),
                ("seasonal_naive", Forecast(snaive)),
            ]
            if starts is not None:  # what the network adds to its level and seasonal components
                forecasts.append(("components", Forecast(starts[n - 1])))
            if classical:
                forecasts += [(name, fc[s_hist.unique_id]) for name, fc in classical[i].items()]
            row: dict[str, float] = {}
            for name, f in forecasts:
                sc = forecast_scores(history, actual, f.mean, m)
                row[f"mase_{name}"], row[f"smape_{name}"] = sc.mase, sc.smape
                for v, (lo, hi) in f.bounds.items():
                    row[f"coverage{v}_{name}"], row[f"msis{v}_{name}"] = interval_scores(
                        history, actual, lo, hi, v, m
                    )
            rows_of.append(row)
        # an entity's scores: the mean over its origins
        per_entity[s_hist.unique_id] = {
            c: float(np.mean([r[c] for r in rows_of])) for c in rows_of[0]
        }
    frame = pd.DataFrame.from_dict(per_entity, orient="index")
    overall = {c: float(frame[c].mean()) for c in frame.columns}
    where = "the origin" if origins == 1 else f"{origins} origins (the mean over them)"
    table = Table(title=f"forecasts published at {where}, {len(frame)} entities, horizon {k}")
    for col in ("forecast", "MASE", "sMAPE %", "entities where the model's MASE is lower"):
        table.add_column(col, justify="right")
    components = ("components",) if model.spec.season else ()
    names = tuple(classical[0]) if classical else ()
    for name in ("model", "naive", "seasonal_naive", *components, *names):
        wins = (
            ""
            if name == "model"
            else f"{int((frame['mase_model'] < frame[f'mase_{name}']).sum())}/{len(frame)}"
        )
        label = {"model": f"{model.spec.cell} (streamed)", "components": "its components alone"}
        table.add_row(
            label.get(name, name.replace("_", " ")),
            f"{overall[f'mase_{name}']:.3f}",
            f"{overall[f'smape_{name}']:.2f}",
            wins,
        )
    console.print(table)
    if levels:
        console.print(_interval_table(overall, levels, ("model", *names), model.spec.cell))
    return {
        "task": "forecast",
        "levels": list(levels),
        "entities": len(frame),
        "horizon": k,
        "origins": origins,
        "season": m,
        "events_streamed": len(rows),
        "stream_seconds": round(stream_s, 1),
        "overall": overall,
        "per_entity": per_entity,
        "max_abs_diff_streamed_vs_offline": diff,
    }


def _interval_table(
    overall: dict[str, float], levels: tuple[int, ...], names: tuple[str, ...], cell: str
) -> Table:
    table = Table(title="prediction intervals on the held-out points")
    table.add_column("forecast", justify="right")
    for v in levels:
        table.add_column(f"{v}% coverage", justify="right")
        table.add_column(f"MSIS {v}", justify="right")
    for name in names:
        cells = []
        for v in levels:
            cells += [f"{overall[f'coverage{v}_{name}']:.1%}", f"{overall[f'msis{v}_{name}']:.2f}"]
        label = f"{cell} (streamed)" if name == "model" else name.replace("_", " ")
        table.add_row(label, *cells)
    return table


def _evaluate_classifier(
    base: Settings,
    data: pd.DataFrame,
    model: SequenceModel,
    model_dir: Path,
    label: str,
    workdir: Path,
    console: Console,
    keep: bool,
) -> dict[str, Any]:
    spec = model.spec
    if label not in data.columns:
        raise DataError(f"no label column {label!r} in the data")
    series = split_series(data, list(spec.features), label)
    unknown = {v for s in series for v in s.labels or ()} - set(spec.classes)
    if unknown:
        raise DataError(f"labels the model does not know: {', '.join(sorted(unknown)[:5])}")
    rows = list(event_rows(data, drop=[label]))
    expected = sum(len(window_bounds(s, spec)) for s in series) if spec.window else len(rows)
    kind = f"windows of {spec.window}" if spec.window else "every event"
    console.print(f"streaming {len(rows)} events of {len(series)} entities (predictions: {kind})")
    preds, stream_s = _stream(base, model_dir, spec.window > 0, rows, expected, workdir, keep)
    by_entity: dict[str, dict[int, Prediction]] = {}
    for p in preds:
        by_entity.setdefault(p.unique_id, {})[p.step] = p
    index = {c: i for i, c in enumerate(spec.classes)}
    majority = Counter(s.labels[-1] for s in series if s.labels).most_common(1)[0][0]
    diff = 0.0
    if spec.window:
        correct, losses, n = 0, 0.0, 0
        for s in series:
            got = by_entity.get(s.unique_id, {})
            for row, offline in offline_windows(model, s):
                p = got[row + 1]
                diff = max(diff, float(np.max(np.abs(np.asarray(p.values) - offline))))
                truth = (s.labels or [])[row]
                correct += p.label == truth
                losses += log_loss(p.values[index[truth]])
                n += 1
        result: dict[str, Any] = {
            "task": "classify-windows",
            "windows": n,
            "accuracy": correct / n,
            "log_loss": losses / n,
        }
        rows_out = [
            ("accuracy per closed window", f"{correct / n:.4f}"),
            ("log loss", f"{losses / n:.4f}"),
        ]
    else:
        t_max = max(len(s.y) for s in series)
        right_at = np.zeros(t_max)
        seen_at = np.zeros(t_max)
        earliest: list[int] = []
        correct, losses = 0, 0.0
        for s in series:
            got = by_entity.get(s.unique_id, {})
            offline = offline_predict(model, s)[0]
            truth = (s.labels or [])[-1]
            ok = []
            for t in range(len(s.y)):
                p = got[t + 1]
                diff = max(diff, float(np.max(np.abs(np.asarray(p.values) - offline[t]))))
                ok.append(p.label == truth)
                right_at[t] += ok[-1]
                seen_at[t] += 1
            final = got[len(s.y)]
            correct += ok[-1]
            losses += log_loss(final.values[index[truth]])
            # the first step from which the prediction stays right to the end
            first = len(ok)
            while first > 0 and ok[first - 1]:
                first -= 1
            if ok[-1]:
                earliest.append(first + 1)
        n = len(series)
        curve = (right_at / np.maximum(seen_at, 1)).tolist()
        result = {
            "task": "classify",
            "sequences": n,
            "accuracy_at_end": correct / n,
            "log_loss_at_end": losses / n,
            "accuracy_by_step": [round(a, 4) for a in curve],
            "right_from_step_median": float(np.median(earliest)) if earliest else None,
            "right_from_step_mean": float(np.mean(earliest)) if earliest else None,
        }
        rows_out = [
            ("accuracy at the end of the sequence", f"{correct / n:.4f}"),
            ("log loss at the end", f"{losses / n:.4f}"),
            *[
                (f"accuracy after {t} of {t_max} events", f"{curve[t - 1]:.4f}")
                for t in sorted({max(1, t_max // 4), max(1, t_max // 2), max(1, 3 * t_max // 4)})
            ],
            (
                "right from event (median, of those right at the end)",
                f"{result['right_from_step_median']}",
            ),
        ]
    result["majority_class_accuracy"] = float(
        np.mean([s.labels[-1] == majority for s in series if s.labels])
    )
    rows_out.append(("majority class (baseline)", f"{result['majority_class_accuracy']:.4f}"))
    kind = f"bidirectional {spec.cell} window" if spec.window else f"{spec.cell} step"
    table = Table(title=f"{kind} classifier, streamed predictions")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for a, b in rows_out:
        table.add_row(a, b)
    console.print(table)
    result.update(
        events_streamed=len(rows),
        stream_seconds=round(stream_s, 1),
        max_abs_diff_streamed_vs_offline=diff,
    )
    return result


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
