"""Running a worker next to a command (the demo, ``streamer evaluate``): its own namespace of topics,
consumer group and state keys, and a worker process started and stopped with the command."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from streamer.settings import Settings, to_env

__all__ = ["namespaced", "worker_process"]


def namespaced(base: Settings, run: str, model: Path) -> Settings:
    """``base`` with topics, group and state keys of their own (``{run}.events``, ...), serving the
    artifact ``model`` and not the registry's active version."""
    d = base.model_dump()
    d.update(app_id=f"streamer-{run}", model_name=run, model_path=model, registry_poll_s=0)
    d["topics"] = {
        **d["topics"],
        "events": f"{run}.events",
        "predictions": f"{run}.predictions",
        "windows": f"{run}.windows",
        "dead_letter": f"{run}.dlq",
    }
    return Settings.model_validate(d)


@contextlib.contextmanager
def worker_process(settings: Settings, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A ``streamer worker`` process for ``settings``, logging to ``log_path``; stopped (SIGTERM,
    then SIGKILL after a minute) on exit."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")},
        **to_env(settings),
    }
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streamer.cli", "worker", "-l", "info"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield worker
        finally:
            worker.terminate()
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
