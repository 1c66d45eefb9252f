"""Faust wiring for streamer: the app and its agent. Thin on purpose; the work is in ``streamer``."""
