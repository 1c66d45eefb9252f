"""The dashboard's web server: the page, a few JSON endpoints, and the live stream."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from streamer.ops.dashboard.collector import Collector
from streamer.ops.dashboard.entities import Cursor, EntitySeries, EntityStore
from streamer.ops.dashboard.kafka import PredictionReader
from streamer.settings import Settings

__all__ = ["WEB", "DashboardServer"]

#: the page's static files
WEB = Path(__file__).resolve().parents[1] / "web"


class DashboardServer:
    """The page, a few JSON endpoints, and the live stream (server-sent events)."""

    def __init__(
        self,
        settings: Settings,
        collector: Collector,
        store: EntityStore,
        reader: PredictionReader,
    ):
        self.settings = settings
        self.collector = collector
        self.store = store
        self.reader = reader
        self._closing = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/api/status", self.status)
        app.router.add_get("/api/history", self.history)
        app.router.add_get("/api/entities", self.entities)
        app.router.add_get("/api/entity", self.entity)
        app.router.add_get("/events", self.events)
        app.router.add_static("/static/", WEB)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _shutdown(self, _app: web.Application) -> None:
        self._closing.set()  # the streams end, so the server need not wait for them
        self.collector.pulse.fire()

    def status_json(self) -> dict[str, Any]:
        c, t = self.collector, self.settings.topics
        return {
            "app_id": self.settings.app_id,
            "topics": {"events": t.events, "predictions": t.predictions},
            "summary": c.summary(),
            "workers": [w.as_json() for w in c.workers.values()],
            "discovery": c.discovery,
            "errors": [e for e in (c.discovery_error, c.lag_error) if e],
            "entities": len(self.store),
            "predictions_read": self.store.read,
            "reader": self.reader.status,
        }

    async def index(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    async def status(self, _request: web.Request) -> web.Response:
        return _json(self.status_json())

    async def history(self, _request: web.Request) -> web.Response:
        return _json(self.collector.history_json())

    async def entities(self, request: web.Request) -> web.Response:
        """Entity ids for the picker: those matching ``q``, at most ``limit``."""
        try:
            limit = min(200, max(1, int(request.query.get("limit", "20"))))
        except ValueError:
            raise web.HTTPBadRequest(text="limit must be a number") from None
        found = self.store.search(request.query.get("q", ""), limit)
        return _json({"entities": found, "total": len(self.store)})

    async def entity(self, request: web.Request) -> web.Response:
        entity = request.query.get("id", "")
        series = self.store.get(entity)
        if series is None:
            return _json({"entity": entity, "missing": True}, status=404)
        return _json(series.view(entity)[0])

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The page's live stream: ``history`` and ``status`` first, then a ``tick`` every
        second, and ``entity`` whenever the picked entity (``?entity=``) has new points."""
        entity = request.query.get("entity", "").strip()
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)

        async def send(kind: str, data: object) -> None:
            await resp.write(b"event: %s\ndata: %s\n\n" % (kind.encode(), _dumps(data)))

        c = self.collector
        try:
            await send("history", c.history_json())
            await send("status", self.status_json())
            ticks, said_missing = c.ticks, False
            sent: tuple[EntitySeries, Cursor] | None = None  # the series the page has, and how far
            while not self._closing.is_set():
                series = self.store.get(entity) if entity else None
                if series is not None and (sent is None or sent[1].seq != series.seq):
                    # A series dropped from the store and read again is another one: send it all.
                    after = sent[1] if sent is not None and sent[0] is series else None
                    view, cursor = series.view(entity, after)
                    sent = (series, cursor)
                    await send("entity", view)
                elif entity and series is None and not said_missing:
                    await send("entity", {"entity": entity, "missing": True})
                    said_missing = True
                if c.ticks != ticks and c.history:
                    ticks = c.ticks
                    await send("tick", {"tick": c.history[-1].as_json(), **self.status_json()})
                await c.pulse.wait(0.25)
        except ConnectionResetError:  # the page went away
            pass
        return resp


def _dumps(data: object) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)  # partitions key some maps


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(data), status=status, content_type="application/json")
