"""Offline reference results and event builders shared by the integration tests."""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd

from streamer import seasonal
from streamer.model import ModelSpec, SequenceModel
from streamer.schemas import Event, Prediction
from streamer.serve.pipeline import RawMessage
from streamer.train.data import event_rows, split_series
from streamer.train.offline import offline_predict


@dataclass
class Expected:
    forecasts: npt.NDArray[np.float64]  # (T, K), then the intervals' bounds
    h: npt.NDArray[np.float32]  # (L, H)
    c: npt.NDArray[np.float32]
    ds: list[str]
    #: the level and seasonal components after the whole series (empty: a model without them)
    comp: npt.NDArray[np.float64]


def expected_by_entity(model: SequenceModel, df: pd.DataFrame) -> dict[str, Expected]:
    features = list(model.spec.features)
    out = {}
    for s in split_series(df, features):
        fc, h, c = offline_predict(model, s)
        out[s.unique_id] = Expected(fc, h, c, s.ds, components_after(model.spec, s.y))
    return out


def components_after(spec: ModelSpec, y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A series' level and seasonal components after all of it, one observation at a time."""
    comp = np.zeros((1, spec.components))
    if spec.season:
        for v in y:
            comp = seasonal.update(
                comp, np.array([v]), *seasonal.params(spec.smoothing), season=spec.season
            )[0]
    return comp[0]


def synthetic_events(df: pd.DataFrame, partitions: int = 4) -> list[Event]:
    """Events in time order, partitioned by a hash of the key, offsets counting per partition."""
    next_offset = [0] * partitions
    events = []
    features = [c for c in df.columns if c not in ("unique_id", "ds", "y")]
    for row in event_rows(df):
        uid = str(row["unique_id"])
        p = zlib.crc32(uid.encode()) % partitions
        events.append(
            Event(
                uid,
                str(row["ds"]),
                float(row["y"]),
                tuple(float(row[f]) for f in features),
                p,
                next_offset[p],
            )  # type: ignore[arg-type]
        )
        next_offset[p] += 1
    return events


def check_predictions(preds: list[Prediction], expected: dict[str, Expected]) -> int:
    """Every prediction equals the offline forecast at its step (and its intervals, if the model
    has them); returns the number checked."""
    for p in preds:
        exp = expected[p.unique_id]
        i = p.step - 1
        assert exp.ds[i] == p.ds, (p.unique_id, p.step, p.ds)
        np.testing.assert_allclose(
            p.served,
            exp.forecasts[i],
            rtol=1e-5,
            atol=1e-5,
            err_msg=f"{p.unique_id} step {p.step}",
        )
    return len(preds)


def raw_messages(events: list[Event]) -> list[RawMessage]:
    """The Kafka messages the events came from (no features)."""
    return [
        RawMessage(
            e.unique_id.encode(),
            orjson.dumps({"unique_id": e.unique_id, "ds": e.ds, "y": e.y}),
            e.partition,
            e.offset,
        )
        for e in events
    ]


async def in_batches(pred: Any, events: list[Event], seed: int) -> list[Prediction]:
    """Step the events through a predictor in batches of random sizes."""
    rng = random.Random(seed)
    out: list[Prediction] = []
    i = 0
    while i < len(events):
        n = rng.choice([1, 3, 17, 64, 200])
        out += await pred.step_many(events[i : i + n])
        i += n
    return out
