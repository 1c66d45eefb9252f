"""Your own Faust app with streamer inside: one agent turns raw meter readings into streamer's
events, another predicts for them in batches and raises an alert when a forecast runs high.

    python examples/faust_enrich.py worker -l info --without-web

The model, Redis and the topics come from streamer's settings (``STREAMER_*``, ``streamer.toml``)
as for every streamer command; the readings and alerts topics are this app's own.
"""

from __future__ import annotations

import os

import faust
import orjson

from streamer.faust import Streamer, faust_app
from streamer.settings import Settings

settings = Settings.load()
app = faust_app(settings)  # or a faust.App of your own making
streamer = Streamer(app, settings)  # opens its stores with the app, closes them after

#: Forecasts above this many kWh for the next step raise an alert.
THRESHOLD = float(os.environ.get("ALERT_KWH", "50"))


class Reading(faust.Record, serializer="json"):
    meter: str
    at: str  # ISO date or time
    wh: float  # watt-hours


readings = app.topic(f"{settings.topics.events}.readings", value_type=Reading)
alerts = app.topic(f"{settings.topics.events}.alerts", value_serializer="json")


@app.agent(readings)
async def enrich(stream: faust.StreamT[Reading]) -> None:
    """Readings in, streamer events out, keyed by meter (the events topic is raw bytes)."""
    async for r in stream:
        event = {"unique_id": r.meter, "ds": r.at, "y": r.wh / 1000.0}
        await streamer.events_topic.send(key=r.meter.encode(), value=orjson.dumps(event))


@app.agent(streamer.events_topic)
async def predict(stream: faust.StreamT[bytes]) -> None:
    """streamer's batched, fenced stepping; the batch's events are acked after this loop's body."""
    async for outcome in streamer.batches(stream):  # type: ignore[arg-type]
        for p in outcome.predictions:
            if p.values and p.values[0] > THRESHOLD:
                await alerts.send(
                    key=p.unique_id.encode(),
                    value={"meter": p.unique_id, "at": p.ds, "next_kwh": p.values[0]},
                )


if __name__ == "__main__":
    app.main()
