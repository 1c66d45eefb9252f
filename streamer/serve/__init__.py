"""Serving: a batch of messages in, predictions and dead letters out, state through a store.

- :mod:`~streamer.serve.columns`: messages to columns (the fast decoder);
- :mod:`~streamer.serve.outputs`: a batch's predictions as columns, and out as JSON;
- :mod:`~streamer.serve.fence`: the offset fence, the partition policy and the waves, as array
  operations;
- :mod:`~streamer.serve.predictor`: fence, step, outputs of one batch against a state store.

No Kafka client here.
"""
