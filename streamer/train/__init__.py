"""Training and evaluation: long-format data (:mod:`~streamer.train.data`), training and offline
prediction (:mod:`~streamer.train.training`), scoring what a worker publishes
(:mod:`~streamer.train.evaluate`) and the demo (:mod:`~streamer.train.demo`)."""
