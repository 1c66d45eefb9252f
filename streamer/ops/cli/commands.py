"""What each ``streamer`` command does but those that build and score models
(:mod:`streamer.ops.cli.modelling`); :func:`streamer.ops.cli.main` picks one by name
(``cmd_<command>``, ``cmd_<group>_<command>``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from streamer.ops.cli.options import columns_of, settings_from

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
    raw = rename_long(read_frame(args.file), columns_of(args), str(args.file), True)
    fixed = ("unique_id", "ds", "y")
    text = [c for c in raw.columns if c not in fixed and not pd.api.types.is_numeric_dtype(raw[c])]
    if text:  # events of a next-event model: text columns, y only if the file has one
        df, _ = check_events(raw, text, str(args.file))
    else:
        df = read_long(args.file, columns=columns_of(args))
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
