"""Operating streamer: the command line (:mod:`~streamer.ops.cli`), metrics and presence,
``streamer doctor``, ``streamer state ...``, ``streamer tail``, the dashboard, and a worker run
beside a command (:mod:`~streamer.ops.local`)."""
