"""What the commands that build and score models do: ``streamer dataset``, ``train`` and
``evaluate``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from streamer.errors import ConfigError
from streamer.ops.cli.options import columns_of, settings_from


def cmd_dataset(args: argparse.Namespace) -> int:
    import pandas as pd

    from streamer.train.data import (
        classification_set,
        demo_panel,
        movielens_100k,
        pedestrian_panel,
        prison_panel,
    )
    from streamer.train.logs import log_sessions

    panels: dict[str, Callable[[], pd.DataFrame]] = {
        "aus-retail": demo_panel,
        "prison": prison_panel,
        "pedestrian": pedestrian_panel,
        "movielens-100k": movielens_100k,
        # normal sessions to train on; others with a third of them hurt, to find
        "log-sessions-train": lambda: log_sessions(2_000, seed=1, prefix="train"),
        "log-sessions-test": lambda: log_sessions(1_000, 1 / 3, seed=2, prefix="test"),
    }
    name = args.name
    if name in panels:
        df = panels[name]()
    else:
        name, split = name.rsplit("-", 1)
        df = classification_set(name, split)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    print(f"{len(df)} rows of {df['unique_id'].nunique()} entities written to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from streamer.model.artifact import save_artifact
    from streamer.serve.predictor import resolve_device
    from streamer.train.config import SMALL_CLASSIFIER_EVENTS, TrainConfig, resolve
    from streamer.train.data import read_frame, read_long, rename_long
    from streamer.train.training import train

    device = resolve_device(args.device)
    torch.set_num_threads(2)
    if args.next:  # events of categorical columns: checked by the next-event trainer
        if args.label or args.window:
            raise ConfigError("--next trains a next-event model: no --label or --window")
        df = rename_long(read_frame(args.file), columns_of(args), str(args.file), True)
    else:
        df = read_long(args.file, args.label, columns_of(args))
    classify = bool(args.label)
    cfg = TrainConfig(
        cell=args.cell,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        horizon=args.horizon,
        epochs=args.epochs,
        patience=args.patience,
        lr=args.lr,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        batch_series=args.batch_size,
        noise=args.noise,
        scale_noise=args.scale_noise,
        label_smoothing=args.label_smoothing,
        lr_schedule=args.lr_schedule,
        holdout=args.holdout,
        seed=args.seed,
        device=str(device),
        task="classify" if classify else "forecast",
        label=args.label,
        scaling=args.scaling,
        window=args.window or 0,
        window_end=args.window_end,
        step_loss=args.step_loss,
        val_fraction=args.val_fraction,
        refit=args.refit,
        levels=args.levels,
        members=args.members,
        season=args.season[0] if not args.next else 0,
        season2=args.season[1] if not args.next else 0,
        next=args.next,
        categorical=tuple(args.categorical),
        embedding=args.embedding,
        top_k=args.top_k,
        max_vocabulary=args.max_vocabulary,
        min_count=args.min_count,
        hash_buckets=args.hash_buckets,
        groups=args.groups,
        groups_searched=args.groups_searched,
        groups_exact=args.groups_exact,
        holdout_fraction=args.holdout_fraction,
        calendar=args.calendar,
    )
    if args.window and not classify:
        raise ConfigError("a window model classifies: pass --label")
    cfg = resolve(df, cfg)  # (the epochs, rate and patience of the task, for the progress bar)
    started = time.monotonic()
    with Progress(
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as prog:
        task = prog.add_task("", total=cfg.epochs)

        last = 0
        member = ""

        def on_member(i: int) -> None:
            nonlocal last, member
            last, member = 0, f"member {i + 1}/{cfg.members}: "
            prog.reset(task, total=cfg.epochs)

        def on_epoch(epoch: int, tl: float, vl: float) -> None:
            nonlocal last
            if epoch < last:  # the refit on every point, for the epochs early stopping chose
                prog.update(task, total=last - 1)
            last = epoch
            val = f"val {vl:.4f}" if vl == vl else "refit on all points"
            prog.update(task, completed=epoch, description=f"{member}loss {tl:.4f} {val}")

        result = train(df, cfg, on_epoch, on_member)
    version = save_artifact(result.model, args.out, result.summary, result.span)
    by_default = ""
    if args.members is None and (cfg.members or 1) > 1:
        by_default = (
            f"; an ensemble by default for a step classifier of at most "
            f"{SMALL_CLASSIFIER_EVENTS:,} training events (--members 1 trains one model)"
        )
    print(
        f"model {version} ({cfg.cell}) written to {args.out}: {_how_trained(result.summary)}"
        + f"{by_default}; {time.monotonic() - started:.1f}s"
    )
    return 0


def _how_trained(summary: dict[str, Any]) -> str:
    """How the epochs were chosen, and the intervals, in a few words."""
    best, refit, members = (summary.get(k) for k in ("best_val_loss", "refit", "members"))
    if members:
        chosen = ", ".join(str((m["refit"] or {}).get("epochs", m["epochs_run"])) for m in members)
        how = f"an ensemble of {len(members)} (epochs chosen on held-out points: {chosen})"
    elif refit:
        how = (
            f"{refit['epochs']} epochs chosen on held-out points (of "
            f"{refit['epochs_run_to_choose']}, validation loss {best:.4f}), then refit on all of them"
        )
    else:
        how = f"{summary['epochs_run']} epochs, " + (
            f"best validation loss {best:.4f}" if best is not None else "no validation split"
        )
    failed = sum(bool(m.get("refit_failed")) for m in members or [summary])
    if failed and members:
        how += (
            f"; the refit on every point learnt nothing for {failed} of them, which are the "
            "models early stopping chose"
        )
    elif failed:
        how += (
            "; the refit on every point learnt nothing, so the model early stopping chose is served"
        )
    if "vocabulary" in summary:
        how += "; vocabularies " + ", ".join(f"{c} {n:,}" for c, n in summary["vocabulary"].items())
        if summary.get("validation"):
            v = summary["validation"]
            how += (
                f"; on the validation entities Recall@10 {v['recall@10']:.4f}, "
                f"MRR@10 {v['mrr@10']:.4f}"
            )
    if "components" in summary:
        co = summary["components"]
        if "season2" in co:
            how += (
                f"; level and seasonal components over {co['season']} and {co['season2']} "
                f"steps (alpha {co['alpha']}, gamma {co['gamma']}, delta {co['delta']})"
            )
        else:
            how += (
                f"; level and seasonal components over {co['season']} steps "
                f"(alpha {co['alpha']}, gamma {co['gamma']})"
            )
    if "intervals" in summary:
        iv = summary["intervals"]
        levels = ", ".join(f"{v}%" for v in iv["levels"])
        how += f"; {levels} intervals calibrated on {iv['residuals_per_step']} points per step"
    return how


def cmd_evaluate(args: argparse.Namespace) -> int:
    from streamer.model.artifact import load_artifact
    from streamer.train.data import read_frame, read_long, rename_long
    from streamer.train.evaluate import run_evaluate, write_json

    settings = settings_from(args)
    art = load_artifact(args.model)  # a bad artifact fails before anything starts
    if art.spec.task == "next":  # events of categorical columns: checked by the evaluation
        df = rename_long(read_frame(args.file), columns_of(args), str(args.file), True)
    else:
        df = read_long(args.file, args.label, columns_of(args))
    result = run_evaluate(
        settings,
        df,
        args.model,
        label=args.label,
        season=args.season,
        workdir=args.workdir,
        keep=args.keep,
        allow_seen=args.allow_seen,
        baselines=args.baselines,
        holdout_fraction=args.holdout_fraction,
        origins=args.origins,
    )
    if args.json:
        write_json(result, args.json)
    print(
        f"streamed {result['events_streamed']} events in {result['stream_seconds']}s; "
        f"streamed predictions equal the offline model's (largest difference "
        f"{result['max_abs_diff_streamed_vs_offline']:.2g})"
        + (f"; results in {args.json}" if args.json else "")
    )
    return 0
