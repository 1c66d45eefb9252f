"""The Faust engine's ready app: ``faust -A workers.faust_app worker -l info``.

Reads the ``STREAMER_*`` settings (and ``streamer.toml``) like every streamer command, and runs one
agent, ``streamer``, that predicts for every event of the events topic
(:class:`streamer.faust.Streamer`). ``streamer worker --engine faust`` runs the same app.
"""

from streamer.faust import streamer_app
from streamer.settings import Settings

app = streamer_app(Settings.load())
