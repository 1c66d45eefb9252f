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

import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from streamer.errors import StreamerError
from streamer.ops.cli import commands, modelling
from streamer.ops.cli.parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
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
        name = f"cmd_{command}"
        handler = getattr(commands, name, None) or getattr(modelling, name)
        return int(handler(args))
    except StreamerError as exc:
        print(f"streamer: error: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        what = f"invalid setting {where}" if where else "invalid settings"
        print(f"streamer: error: {what}: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
