"""The ``streamer`` command line.

    streamer worker            run a Faust worker: events in, predictions out
    streamer replay FILE       send a long-format CSV/Parquet file as events, in time order
    streamer train FILE --out DIR
    streamer state get ENTITY [--json]
    streamer tail              print predictions as they arrive
    streamer demo              train on aus_retail, stream it through Kafka, score it live

Settings come from ``STREAMER_*`` environment variables (see ``streamer.settings``); the flags below
override the common ones. A wrong argument prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from streamer.errors import StreamerError
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
    t.add_argument("--horizon", type=_positive(int), default=12)
    t.add_argument("--hidden-size", type=_positive(int), default=32)
    t.add_argument("--layers", type=_positive(int), default=2)
    t.add_argument("--epochs", type=_positive(int), default=100)
    t.add_argument("--holdout", type=int, default=0, help="points per series left out of training")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")

    s = sub.add_parser("state", help="inspect per-entity state in Redis")
    ssub = s.add_subparsers(dest="state_command", required=True, parser_class=_Parser)
    g = ssub.add_parser("get", parents=[common], help="decode one entity's state")
    g.add_argument("entity")
    g.add_argument("--json", action="store_true", help="the full record as JSON")

    tl = sub.add_parser("tail", parents=[common], help="print predictions as they arrive")
    tl.add_argument("--entity", action="append", help="only this entity (repeatable)")
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
    return p


def _cmd_worker(args: argparse.Namespace) -> int:
    from mode import Worker

    from streamer.kafka import ensure_topics
    from workers.app import StreamerService, build_handler

    settings = _settings(args)
    handler = build_handler(settings)  # loads the model first: a bad model fails before Kafka
    asyncio.run(ensure_topics(settings))
    service = StreamerService(settings, handler)
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

    from streamer.data import event_rows, read_long
    from streamer.kafka import ensure_topics, replay_events

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


def _cmd_train(args: argparse.Namespace) -> int:
    import torch
    from rich.progress import BarColumn, Progress, TextColumn

    from streamer.artifact import save_artifact
    from streamer.data import read_long
    from streamer.predictor import resolve_device
    from streamer.training import TrainConfig, train

    device = resolve_device(args.device)
    torch.set_num_threads(2)
    df = read_long(args.file)
    cfg = TrainConfig(
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        horizon=args.horizon,
        epochs=args.epochs,
        holdout=args.holdout,
        seed=args.seed,
        device=str(device),
    )
    with Progress(TextColumn("train"), BarColumn(), TextColumn("{task.description}")) as prog:
        task = prog.add_task("", total=cfg.epochs)

        def on_epoch(epoch: int, tl: float, vl: float) -> None:
            prog.update(
                task, completed=epoch, description=f"epoch {epoch} loss {tl:.4f} val {vl:.4f}"
            )

        result = train(df, cfg, on_epoch)
    version = save_artifact(result.model, args.out, result.summary)
    print(
        f"model {version} written to {args.out} ({result.summary['epochs_run']} epochs, "
        f"val loss {result.summary['best_val_loss']:.4f})"
    )
    return 0


def _cmd_state_get(args: argparse.Namespace) -> int:
    from streamer.inspect import show_state

    return asyncio.run(show_state(_settings(args), args.entity, as_json=args.json))


def _cmd_tail(args: argparse.Namespace) -> int:
    from streamer.inspect import tail

    return asyncio.run(
        tail(
            _settings(args),
            entities=set(args.entity or ()),
            from_beginning=args.from_beginning,
            max_count=args.max,
            timeout_s=args.timeout,
            as_json=args.json,
        )
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from streamer.demo import run_demo

    return run_demo(_settings(args), args.workdir, epochs=args.epochs, rate=args.rate)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command != "worker":
        # These commands report an unreachable broker in one line of their own.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    command = args.command if args.command != "state" else f"state_{args.state_command}"
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
