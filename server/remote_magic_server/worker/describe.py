"""Raw aggregates of a spec's admitted rows, for `POST /v1/describe`: the worker side.

Runs in a fresh confined worker like a training job (the API never reads rows). It reports exact
counts only; the trusted parent applies the disclosure policy (privacy/describe.py), the differencing
guard and, on DP datasets, the noise. Histogram edges come from a coarse "nice" grid (steps of 1, 2 or
5 times a power of ten) laid over the middle 90% of the values, with open-ended outer bins, so no edge
is an extreme value.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import evidence, staging

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


def _numeric(name: str, series: pd.Series, min_count: int) -> dict:
    values = series.dropna().to_numpy(dtype=float)
    if len(values) < min_count:
        return {
            "name": name,
            "kind": "numeric",
            "missing": int(series.isna().sum()),
            "histogram": {"edges": [], "counts": [len(values)]},
        }
    edges = nice_edges(values)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return {
        "name": name,
        "kind": "numeric",
        "missing": int(series.isna().sum()),
        "histogram": {"edges": edges, "counts": [int(n) for n in counts]},
    }


def _categorical(name: str, series: pd.Series, keep: int) -> dict:
    counts = series.dropna().astype(str).value_counts()
    top = counts.iloc[:keep]
    return {
        "name": name,
        "kind": "categorical",
        "missing": int(series.isna().sum()),
        "categories": {str(k): int(v) for k, v in top.items()},
        "rest": int(counts.iloc[keep:].sum()),
    }


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)


def _is_classes(series: pd.Series) -> bool:
    if pd.api.types.is_float_dtype(series.dtype):
        return False
    return series.nunique(dropna=True) <= MAX_CLASSES


def describe(task: dict, job_dir: Path) -> dict:
    """Exact aggregates of the admitted rows, and the admitted row set for the guard."""
    spec = {k: v for k, v in task["spec"].items() if k != "eval"}
    staged = staging.stage(
        task["path"], spec, task["features"], task["filter_columns"], task["id_column"], None
    )
    frame, label = staged.eval, staged.label
    policy = task["policy"]
    keep = policy["max_categories"] + 1
    columns = []
    classes = None
    if _is_classes(frame[label]):
        classes = {str(k): int(v) for k, v in frame[label].value_counts(dropna=True).items()}
    else:
        columns.append(_numeric(label, frame[label], policy["min_count"]))
    for name in staged.features:
        series = frame[name]
        if _is_numeric(series):
            columns.append(_numeric(name, series, policy["min_count"]))
        else:
            columns.append(_categorical(name, series, keep))
    return {
        "rows": len(frame),
        "classes": classes,
        "columns": columns,
        "row_sets": evidence.write_row_sets(job_dir, {"admitted": staged.eval_rows}),
        "table_rows": evidence.table_rows(task["path"]),
    }
