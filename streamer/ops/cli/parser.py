"""The ``streamer`` command line's arguments: the parser, and the settings its flags override."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from streamer.settings import Settings

DATASETS = ("aus-retail", "italy-power-demand-train", "italy-power-demand-test")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def settings_from(args: argparse.Namespace) -> Settings:
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
