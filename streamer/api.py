"""streamer from Python: train a model, load it, publish it to the registry, and predict on
batches of events in your own process, with the same stepping, state records and fences as a
worker.

>>> import pandas as pd, streamer.api as st
>>> df = pd.DataFrame({
...     "store": ["a"] * 30 + ["b"] * 30,
...     "month": list(pd.date_range("2020-01-01", periods=30, freq="MS")) * 2,
...     "sales": [float(i % 12) for i in range(60)],
... })
>>> model = st.train(df, horizon=3, epochs=2, hidden_size=8, columns=("store", "month", "sales"))
>>> model.freq
'MS'
>>> live = st.OnlinePredictor(model)                   # states in memory (or in Redis: store=)
>>> [p] = live.predict([{"unique_id": "a", "ds": "2022-07-01", "y": 6.0}])
>>> len(p.forecast), p.forecast_ds
(3, ('2022-08-01', '2022-09-01', '2022-10-01'))
>>> live.state("a").step                              # one event stepped for entity a
1
>>> live.close()
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from streamer.errors import ConfigError
from streamer.schemas import Event, Prediction
from streamer.settings import Settings

if TYPE_CHECKING:
    from streamer.model.artifact import Artifact
    from streamer.model.recurrent import ModelSpec, SequenceModel
    from streamer.serve.predictor import Predictor
    from streamer.state import StateStore
    from streamer.state.codec import StateRecord

__all__ = ["Model", "OnlinePredictor", "load", "publish", "train"]


@dataclasses.dataclass
class Model:
    """A trained model: the torch module, its spec, its version (a content hash) and its
    training summary. :meth:`save` writes the artifact a worker serves."""

    module: SequenceModel
    spec: ModelSpec
    version: str
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: what it was trained on, per entity (``streamer evaluate`` checks its held-out points)
    span: pd.DataFrame | None = None

    @property
    def freq(self) -> str | None:
        """The series' frequency, inferred in training (forecasts then carry their times)."""
        return self.spec.freq

    def save(self, path: str | Path) -> str:
        """Write the artifact directory (weights and spec) and return the version."""
        from streamer.model.artifact import save_artifact

        return save_artifact(self.module, Path(path), self.training, self.span)

    @classmethod
    def of(cls, art: Artifact) -> Model:
        return cls(art.model, art.spec, art.version, art.training)


def train(
    data: pd.DataFrame | str | Path,
    *,
    horizon: int = 12,
    label: str | None = None,
    columns: tuple[str, str, str] = ("unique_id", "ds", "y"),
    **options: Any,
) -> Model:
    """Train a global model on a long-format frame or file, as ``streamer train`` does.

    ``columns``: the names of the entity id, time and target columns. ``label``: a label column
    makes a classifier. ``options``: any field of :class:`streamer.train.training.TrainConfig`
    (``cell``, ``hidden_size``, ``num_layers``, ``epochs``, ``lr``, ``holdout``, ``seed``...).
    """
    from streamer.model.artifact import model_version
    from streamer.train.data import check_long, read_long, rename_long
    from streamer.train.training import TrainConfig
    from streamer.train.training import train as fit

    if isinstance(data, pd.DataFrame):
        df = check_long(rename_long(data, columns), "data", label)
    else:
        df = read_long(Path(data), label, columns)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown training options {unknown}; known: {sorted(known)}")
    cfg = TrainConfig(
        horizon=horizon,
        label=label,
        task="classify" if label else "forecast",
        **options,
    )
    result = fit(df, cfg)
    return Model(
        result.model, result.model.spec, model_version(result.model), result.summary, result.span
    )


def load(path: str | Path, device: str = "cpu") -> Model:
    """A model from an artifact directory (``streamer train --out``, :meth:`Model.save`)."""
    from streamer.model.artifact import load_artifact

    return Model.of(load_artifact(Path(path), device))


def publish(path: str | Path, settings: Settings | None = None, *, activate: bool = False) -> str:
    """Publish an artifact directory to the registry of ``settings.model_name`` (in the Redis of
    ``settings``; default: :meth:`Settings.load`), and make it the version workers serve if
    ``activate``. Returns the version."""
    from streamer.model.registry import Registry
    from streamer.state import redis_client

    settings = settings or Settings.load()

    async def run() -> str:
        reg = Registry(redis_client(settings), settings.model_name)
        try:
            version = str(await reg.publish(Path(path)))
            if activate:
                await reg.activate(version)
            return version
        finally:
            await reg.aclose()

    return asyncio.run(run())


class OnlinePredictor:
    """Step events through a model in this process: each entity's state is kept in ``store``
    (default: in memory; a :class:`~streamer.state.RedisStateStore` shares states with workers
    and the state CLI) and advanced one step per event, exactly as a worker does.

    Events are mappings with ``unique_id``, ``ds``, ``y`` and the model's feature columns, or
    :class:`~streamer.schemas.Event` objects. Mappings get partition ``partition`` and offsets
    counted from ``offset`` by this object (an event is applied once: the fence skips an offset
    already applied, so a predictor that goes on from another's states in Redis starts its
    offsets after the other's last).
    """

    def __init__(
        self,
        model: Model | str | Path,
        store: StateStore | None = None,
        *,
        device: str = "cpu",
        partition: int = 0,
        offset: int = 0,
    ):
        from streamer.serve.predictor import Predictor
        from streamer.state.memory import MemoryStateStore

        self.model = model if isinstance(model, Model) else load(model, device)
        self.store = store if store is not None else MemoryStateStore()
        self.partition = partition
        #: the offset the next event given as a mapping gets
        self.offset = offset
        self._loop = asyncio.new_event_loop()
        self.predictor: Predictor = Predictor(
            self.model.module, self.model.version, self.store, device=device
        )

    def events(self, rows: Iterable[Mapping[str, Any] | Event]) -> list[Event]:
        """The rows as events, with this predictor's partition and its next offsets."""
        spec = self.model.spec
        features, categorical = spec.features, spec.categorical
        out: list[Event] = []
        for row in rows:
            if isinstance(row, Event):
                out.append(row)
                continue
            try:
                feats = tuple(float(row[f]) for f in features)
                # (a next-event model's events: text values, None out of vocabulary; no y)
                cats = tuple(None if row[c] is None else str(row[c]) for c in categorical)
                y = float(row["y"]) if not categorical or "y" in row else math.nan
                ev = Event(str(row["unique_id"]), str(row["ds"]), y, feats, 0, 0, cats)
            except KeyError as exc:
                raise ConfigError(f"an event has no {exc.args[0]!r}: {dict(row)}") from None
            ev.partition, ev.offset = self.partition, self.offset
            self.offset += 1
            out.append(ev)
        return out

    def predict(self, rows: Iterable[Mapping[str, Any] | Event]) -> list[Prediction]:
        """Step a batch of events (any entities, in order) and return their predictions."""
        return self._loop.run_until_complete(self.predictor.step_many(self.events(rows)))

    def frame(self, rows: Iterable[Mapping[str, Any] | Event]) -> pd.DataFrame:
        """:meth:`predict`, as Nixtla's long format: ``unique_id, ds, cutoff, h, streamer``, and
        ``streamer-lo-80, streamer-hi-80, ...`` for a model with prediction intervals."""
        preds = self.predict(rows)
        levels = self.predictor.served.spec.levels
        bounds = [f"streamer-{side}-{v}" for v in levels for side in ("lo", "hi")]
        records = [
            {
                "unique_id": p.unique_id,
                "ds": p.forecast_ds[h] if p.forecast_ds else None,
                "cutoff": p.ds,
                "h": h + 1,
                "streamer": v,
                **{
                    f"streamer-{side}-{level}": p.intervals[level][i][h]
                    for level in levels
                    if level in p.intervals
                    for i, side in enumerate(("lo", "hi"))
                },
            }
            for p in preds
            for h, v in enumerate(p.values)
        ]
        return pd.DataFrame.from_records(
            records, columns=["unique_id", "ds", "cutoff", "h", "streamer", *bounds]
        )

    def state(self, entity: str) -> StateRecord | None:
        """The entity's stored state record, or None."""
        from streamer.state.codec import decode

        (raw,) = self._loop.run_until_complete(self.store.get_many([entity]))
        return None if raw is None else decode(raw)

    def close(self) -> None:
        self._loop.run_until_complete(self.predictor.aclose())
        self._loop.close()

    def __enter__(self) -> OnlinePredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def predictions_frame(preds: Sequence[Prediction]) -> pd.DataFrame:
    """Predictions as a frame, one row each."""
    return pd.DataFrame.from_records([dataclasses.asdict(p) for p in preds])
