"""Raw aggregates of a spec's admitted rows, for `POST /v1/describe`: the worker side.

Runs in a fresh confined worker like a training job (the API never reads rows). It reports exact counts
only; the trusted parent's release desk decides what leaves (cohort minimums, the differencing guard,
bin merging, suppression, rounding and, on DP datasets, noise). Histogram edges come from a coarse
"nice" grid (steps of 1, 2 or 5 times a power of ten) laid over the middle 90% of the values, with
open-ended outer bins, so no edge is an extreme value.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ..protocol import Admission, ColumnReport, DescribeReport, Histogram, SplitCounts, Task
from ..runner import evidence
from ..runner.channel import Channel
from . import staging

MAX_CLASSES = 50
TARGET_BINS = 10


def nice_edges(values: np.ndarray) -> list[float]:
    """Edges on a grid of round numbers covering the 5th to the 95th percentile."""
    low, high = (float(v) for v in np.quantile(values, [0.05, 0.95]))
    span = high - low
    if span <= 0:
        span = abs(low) or 1.0
    raw_step = span / TARGET_BINS
    power = 10 ** math.floor(math.log10(raw_step))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw_step)
    start = math.floor(low / step)
    stop = math.ceil(high / step)
    if stop == start:
        stop = start + 1
    return [round(k * step, 12) for k in range(start, stop + 1)]


def _numeric(name: str, series: pd.Series) -> ColumnReport:
    values = series.dropna().to_numpy(dtype=float)
    histogram = None
    if len(values):
        edges = nice_edges(values)
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        histogram = Histogram(edges=edges, counts=[int(n) for n in counts])
    return ColumnReport(
        name=name, kind="numeric", missing=int(series.isna().sum()), values=len(values), histogram=histogram
    )


def _categorical(name: str, series: pd.Series, keep: int) -> ColumnReport:
    counts = series.dropna().astype(str).value_counts()
    return ColumnReport(
        name=name,
        kind="categorical",
        missing=int(series.isna().sum()),
        values=int(counts.sum()),
        categories={str(k): int(v) for k, v in counts.iloc[:keep].items()},
        rest=int(counts.iloc[keep:].sum()),
    )


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)


def _is_classes(series: pd.Series) -> bool:
    if pd.api.types.is_float_dtype(series.dtype):
        return False
    return series.nunique(dropna=True) <= MAX_CLASSES


def run(task: Task, channel: Channel, con: duckdb.DuckDBPyConnection | None = None) -> DescribeReport | None:
    """Exact aggregates of the admitted rows, after the parent admitted them; None when it did not.
    `con`: the task's DuckDB, if a warm worker connected it already."""
    assert task.spec is not None and task.staging is not None and task.describe is not None
    channel.stage("staging")
    spec = task.spec
    staged = staging.stage(task, con=con)
    frame = staged.eval.x.table().to_pandas()
    labels = pd.Series(staged.eval.y, name=spec.label)
    classes = None
    if _is_classes(labels):
        classes = {str(k): int(v) for k, v in labels.value_counts(dropna=True).items()}
    admission = Admission(
        counts={"eval": SplitCounts(rows=len(frame), classes=classes)},
        row_sets=evidence.write_row_sets(Path("."), {"admitted": staged.eval_rows}),  # type: ignore[arg-type]
        table_rows=evidence.table_rows(task.staging.dataset_path),
    )
    if not channel.admit(admission):
        return None
    keep = task.describe.max_categories + 1
    columns = [] if classes is not None else [_numeric(spec.label, labels)]
    for name in frame.columns:
        series = frame[name]
        columns.append(_numeric(name, series) if _is_numeric(series) else _categorical(name, series, keep))
    return DescribeReport(rows=len(frame), classes=classes, columns=columns)
