"""Workers announce themselves in Redis, so tools find them without configuration.

Each worker writes one field of the hash ``streamer-workers:{app_id}`` every few seconds
(``STREAMER_METRICS__ANNOUNCE_S``): its id, host, pid, metrics URL, model version, owned
partitions, its dead letters by reason and the time. ``streamer dashboard`` scrapes the metrics
URLs of the live ones, ``streamer doctor`` lists them. A worker removes its field when it stops;
one that died is ignored once its last announcement is older than three periods, and removed by
the next reader.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields

import orjson
import redis.asyncio as aioredis

__all__ = ["WorkerInfo", "announce", "live_workers", "presence_key", "withdraw"]


def presence_key(app_id: str) -> str:
    """
    >>> presence_key("streamer")
    'streamer-workers:streamer'
    """
    return f"streamer-workers:{app_id}"


@dataclass
class WorkerInfo:
    worker_id: str
    host: str
    pid: int
    metrics_url: str | None
    model_name: str
    model_version: str
    partitions: list[int] = field(default_factory=list)
    started_ms: int = 0
    seen_ms: int = 0
    #: seconds between announcements: a worker not seen for three is gone
    period_s: float = 5.0
    #: dead letters sent since the worker started, by reason (``streamer doctor`` reads the
    #: reasons that point at a producer's fault, such as ``partition_conflict``)
    dead_letters: dict[str, int] = field(default_factory=dict)

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.seen_ms / 1000)

    @property
    def alive(self) -> bool:
        return self.age_s <= 3 * self.period_s


_FIELDS = {f.name for f in fields(WorkerInfo)}


async def announce(client: aioredis.Redis, app_id: str, info: WorkerInfo) -> None:
    info.seen_ms = int(time.time() * 1000)
    await client.hset(presence_key(app_id), info.worker_id, orjson.dumps(asdict(info)))


async def withdraw(client: aioredis.Redis, app_id: str, worker_id: str) -> None:
    await client.hdel(presence_key(app_id), worker_id)


async def live_workers(client: aioredis.Redis, app_id: str) -> list[WorkerInfo]:
    """The workers of ``app_id`` that announced themselves recently, by id; the fields of workers
    gone for long (ten periods) are removed."""
    raw: dict[bytes | str, bytes | str] = await client.hgetall(presence_key(app_id))
    out, gone = [], []
    for wid, blob in raw.items():
        try:
            doc = orjson.loads(blob)
            # Fields this version does not know (a newer worker's) are ignored, not fatal.
            info = WorkerInfo(**{k: v for k, v in doc.items() if k in _FIELDS})
        except (orjson.JSONDecodeError, TypeError, AttributeError):
            continue  # not ours to judge: left alone

        if info.alive:
            out.append(info)
        elif info.age_s > 10 * info.period_s:
            gone.append(wid)
    if gone:
        await client.hdel(presence_key(app_id), *gone)
    return sorted(out, key=lambda w: w.worker_id)
