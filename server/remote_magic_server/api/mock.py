"""GET /v1/datasets/{name}/mock: rows with the dataset's schema and no real values, for dry runs.

The rows come from a file the data owner chose to publish (`mock_path`) or are synthesised from the
column types recorded with the dataset's version (`NAME@N` picks version N, else the latest) and the
owner's public declarations: a declared level or class is drawn among the declared ones, a number
uniformly within its declared range (`column_ranges`, a regression label's `label_ranges`), so a dry run
admits rows of the classes the job admits. The synthesis never opens a row of the real data and uses no
statistic of it (no observed range, category or frequency), so a mock can never leak a value. The seed
is the dataset's name, so the same dataset gives the same mock on every call.
"""

from __future__ import annotations

import logging
import math
import zlib
from datetime import date, datetime, time, timedelta
from typing import Annotated

import numpy as np
import pandas as pd
from fastapi import APIRouter, Query

from remote_magic.contract.codes import Refusal
from remote_magic.contract.types import TIME, kind_of
from remote_magic.contract.wire import ColumnInfo, MockData

from ..config.settings import DatasetConfig
from ..intake.catalog import columns_of, granted, version_of
from .deps import SettingsDep, User, VersionsDep

log = logging.getLogger("remote_magic_server.api")
router = APIRouter(prefix="/v1", tags=["datasets"])

MAX_ROWS = 1000
MOCK_EPOCH = datetime(2000, 1, 1)
STRING_LEVELS = 4


def declared_values(
    dtype: str,
    levels: list[str] | None,
    bounds: tuple[float, float] | None,
    rows: int,
    rng: np.random.Generator,
) -> list | None:
    """Values drawn from the owner's public declaration of a column (its levels, else its range), in the
    column's type; None where there is none or it does not fit the type (the type alone decides then)."""
    number = dtype.startswith(("int", "uint")) or dtype in ("double", "float", "halffloat")
    if levels is not None and ("string" in dtype or number):
        try:
            typed = [v if "string" in dtype else float(v) for v in levels]
        except ValueError:
            return None
        if dtype.startswith(("int", "uint")):
            if not all(float(v).is_integer() for v in typed):
                return None
            typed = [int(v) for v in typed]
        return [typed[i] for i in rng.integers(0, len(typed), rows)]
    if bounds is not None and number:
        low, high = bounds
        if dtype.startswith(("int", "uint")):
            if math.ceil(low) > math.floor(high):
                return None
            return [int(v) for v in rng.integers(math.ceil(low), math.floor(high) + 1, rows)]
        return [round(float(v), 3) for v in rng.uniform(low, high, rows)]
    return None


def synthesise(name: str, dtype: str, role: str, rows: int, rng: np.random.Generator) -> list:
    """Values for one column from its Arrow type name only (a column the owner declared nothing about)."""
    if dtype.startswith(("int", "uint")):
        values = rng.integers(0, 2, rows) if role == "label" else rng.integers(0, 100, rows)
        return [int(v) for v in values]
    if dtype in ("double", "float", "halffloat") or dtype.startswith("decimal"):
        return [round(float(v), 3) for v in rng.normal(0.0, 1.0, rows)]
    if dtype == "bool":
        return [bool(v) for v in rng.integers(0, 2, rows)]
    if "string" in dtype:
        levels = 2 if role == "label" else STRING_LEVELS
        return [f"{name}_{v}" for v in rng.integers(0, levels, rows)]
    if kind_of(dtype) == TIME:  # as ISO text (the wire carries no time type), over one year
        seconds = rng.integers(0, 365 * 24 * 3600, rows)
        return [(MOCK_EPOCH + timedelta(seconds=int(v))).isoformat() for v in seconds]
    return [None] * rows


def _from_file(dataset: DatasetConfig, names: list[str], rows: int) -> dict[str, list]:
    path = dataset.mock_path
    assert path is not None
    if path.suffix.lower() == ".csv":
        frame = pd.read_csv(path, nrows=rows)
    else:
        frame = pd.read_parquet(path).head(rows)
    present = [c for c in names if c in frame.columns]
    return {c: [None if _missing(v) else _plain(v) for v in frame[c].tolist()] for c in present}


def _missing(value: object) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or value is pd.NA or value is pd.NaT


def _plain(value: object) -> object:
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return value.item() if isinstance(value, np.generic) else value


def mock_data(dataset_name: str, dataset: DatasetConfig, schema: list[ColumnInfo], rows: int) -> MockData:
    columns = [c for c in schema if c.role in ("feature", "label")]
    given: dict[str, list] = {}
    if dataset.mock_path is not None:
        given = _from_file(dataset, [c.name for c in columns], rows)
        rows = min((len(v) for v in given.values()), default=rows)
    rng = np.random.default_rng(zlib.crc32(dataset_name.encode()))
    ranges = {**dataset.column_ranges, **dataset.label_ranges}
    values = []
    for c in columns:
        if c.name in given:
            values.append(given[c.name])
            continue
        declared = declared_values(c.dtype, dataset.column_levels.get(c.name), ranges.get(c.name), rows, rng)
        values.append(declared if declared is not None else synthesise(c.name, c.dtype, c.role, rows, rng))
    return MockData(
        dataset=dataset_name,
        source="file" if given else "synthetic",
        columns=columns,
        rows=[list(r) for r in zip(*values)] if values else [],
    )


@router.get("/datasets/{name}/mock", response_model=MockData)
def mock(
    settings: SettingsDep,
    versions: VersionsDep,
    user: User,
    name: str,
    rows: Annotated[int, Query(ge=1, le=MAX_ROWS, description="How many mock rows.")] = 200,
) -> MockData:
    dataset_name, dataset = granted(settings, user.datasets, name)
    schema = columns_of(dataset, version_of(versions, name))
    try:
        return mock_data(dataset_name, dataset, schema, rows)
    except (OSError, ValueError):
        log.exception("mock data of dataset %s could not be read", dataset_name)
        raise Refusal(
            "mock_unavailable", "the mock data of this dataset could not be read; tell its data owner"
        ) from None
