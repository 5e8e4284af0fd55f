"""Raw aggregates of a spec's admitted rows, for `POST /v1/describe`: the worker side.

Runs in a fresh confined worker like a training job (the API never reads rows). It reports exact counts
only; the trusted parent's release desk decides what leaves (cohort minimums, the differencing guard,
bin merging, suppression, rounding and, on DP datasets, noise). Histogram edges come from a coarse
"nice" grid (steps of 1, 2 or 5 times a power of ten) laid over the middle 90% of the values, with
open-ended outer bins, so no edge is an extreme value. A true/false column (its Arrow type says so, in
every mode) is a category with the two levels True and False, never a histogram.

What sets the edges and the categories shown, by mode (a true/false column's levels are its type's):
- mode rules: the exact 5th and 95th percentiles, and the most frequent exact values;
- the noisy modes (`DescribeOptions.private`): nothing exact. A column's declared range (the label's
  `label_ranges`) gives its grid, declared levels its categories; the label's classes are counted only
  where they are public (declared, or the spec's `classes`), never the rows' own distinct labels. Every
  other column is sketched, all in one Gaussian release the parent draws and charges (`Channel.noise`, L2
  sensitivity sqrt(columns): one row is one count per column): a numeric column's rows per bin of the DP
  trainer's fixed public grid (`WIDE_GRID`), whose noisy 5th and 95th percentiles give the grid; a text
  column's rows per level, of which those whose noisy count clears the DP trainer's selection threshold
  are kept (a stable histogram: a level few rows hold is kept with probability at most `delta`). The exact
  counts on those public or DP edges and levels then go to the desk, which noises them.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from remote_magic.contract.rows import as_pandas
from remote_magic.contract.types import BOOLEAN, kind_of
from remote_magic.families.base import class_names, declared_values
from remote_magic.families.dpboost.accounting import gaussian_sigma, selection_threshold
from remote_magic.families.dpboost.candidates import WIDE_GRID

from ..protocol import (
    Admission,
    ColumnReport,
    DescribeOptions,
    DescribeReport,
    Histogram,
    SplitCounts,
    Task,
)
from ..runner import evidence
from ..runner.channel import Channel
from . import staging

MAX_CLASSES = 50
TRUE_FALSE = ["False", "True"]  # a true/false column's levels: public, from its type
TARGET_BINS = 10
MIDDLE = (0.05, 0.95)
EMPTY_SIGMAS = 3.0  # a sketched bin counts only above this many noise deviations


def nice_edges(values: np.ndarray) -> list[float]:
    """Edges on a grid of round numbers covering the 5th to the 95th percentile."""
    low, high = (float(v) for v in np.quantile(values, MIDDLE))
    return nice_grid(low, high)


def nice_grid(low: float, high: float) -> list[float]:
    """Edges on a grid of round numbers covering [low, high], about `TARGET_BINS` bins."""
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


def range_grid(low: float, high: float) -> list[float]:
    """A declared range's edges: its two ends, and the round numbers of `nice_grid` between them, so no
    bin reaches outside what the owner declared (age [18, 90]: 18, 20, 30, ..., 80, 90)."""
    inner = [e for e in nice_grid(low, high) if low < e < high]
    return [float(low), *inner, float(high)] if high > low else [float(low), float(low) + 1.0]


def noisy_middle(noisy: np.ndarray, grid: np.ndarray, floor: float) -> tuple[float, float]:
    """The 5th and 95th percentiles of noisy counts over a grid's bins (post-processing). Bins whose
    noisy count is under `floor` weigh nothing (most of the wide grid is empty, and its noise would
    otherwise outweigh the rows); a bin's weight is spread evenly over it, the open outer bins end at
    their grid edge."""
    weights = np.where(noisy > floor, noisy, 0.0)
    total = weights.sum()
    if total <= 0:
        return float(grid[0]), float(grid[-1])
    left = np.concatenate([[grid[0]], grid])
    right = np.concatenate([grid, [grid[-1]]])
    cumulative = np.cumsum(weights) / total
    found = []
    for q in MIDDLE:
        b = min(int(np.searchsorted(cumulative, q, side="left")), len(weights) - 1)
        before = cumulative[b - 1] if b > 0 else 0.0
        share = (q - before) * total / weights[b] if weights[b] > 0 else 0.5
        found.append(float(left[b] + min(max(share, 0.0), 1.0) * (right[b] - left[b])))
    return found[0], found[1]


def _numeric(
    name: str, series: pd.Series, edges: list[float] | None = None, closed: bool = False
) -> ColumnReport:
    """A numeric column's histogram on `edges` (public or DP), else on edges from its exact values;
    `closed` (a declared range): each value clipped into the range, as a job clips it, so the outer
    open bins stay empty."""
    values = series.dropna().to_numpy(dtype=float)
    histogram = None
    if edges is None and len(values):
        edges = nice_edges(values)
    if edges is not None:
        at = np.searchsorted(edges, values, side="right")
        if closed:
            at = np.clip(at, 1, len(edges) - 1)
        counts = np.bincount(at, minlength=len(edges) + 1)
        histogram = Histogram(edges=edges, counts=[int(n) for n in counts], closed=closed)
    return ColumnReport(
        name=name, kind="numeric", missing=int(series.isna().sum()), values=len(values), histogram=histogram
    )


def _categorical(name: str, series: pd.Series, keep: int, levels: list[str] | None = None) -> ColumnReport:
    """A text column's counts of `levels` (public or DP) and of the rest, else of its `keep` most
    frequent exact values."""
    counts = series.dropna().astype(str).value_counts()
    if levels is not None:
        chosen = counts.reindex(levels, fill_value=0)
        return ColumnReport(
            name=name,
            kind="categorical",
            missing=int(series.isna().sum()),
            values=int(counts.sum()),
            categories={str(k): int(v) for k, v in chosen.items()},
            rest=int(counts.sum() - chosen.sum()),
        )
    return ColumnReport(
        name=name,
        kind="categorical",
        missing=int(series.isna().sum()),
        values=int(counts.sum()),
        categories={str(k): int(v) for k, v in counts.iloc[:keep].items()},
        rest=int(counts.iloc[keep:].sum()),
    )


def _true_false(series: pd.Series) -> pd.Series:
    """A true/false column (read as 1.0/0.0, missing NaN) as the text of its two levels, so it is
    counted as a category, not binned as a number."""
    return series.map({1.0: "True", 0.0: "False"}).astype(object)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)


def _is_classes(series: pd.Series) -> bool:
    if pd.api.types.is_float_dtype(series.dtype):
        return False
    return series.nunique(dropna=True) <= MAX_CLASSES


def _classes(labels: pd.Series, public: list[str] | None, private: bool) -> dict[str, int] | None:
    """The rows per class: in the noisy modes only of public classes (the owner's declared ones, or the
    spec's), every one counted with or without rows, else none (the label is then shown as a column,
    through the sketch, like any other); in mode rules of the rows' own distinct labels."""
    found = labels.value_counts(dropna=True)
    if public is not None:
        named = {str(k): int(v) for k, v in found.items()}
        return {name: named.get(name, 0) for name in class_names(declared_values(public, labels.dtype))}
    if private or not _is_classes(labels):
        return None
    return {str(k): int(v) for k, v in found.items()}


def run(task: Task, channel: Channel, con: duckdb.DuckDBPyConnection | None = None) -> DescribeReport | None:
    """Exact aggregates of the admitted rows, after the parent admitted them; None when it did not.
    `con`: the task's DuckDB, if a warm worker connected it already."""
    assert task.spec is not None and task.staging is not None and task.describe is not None
    channel.stage("staging")
    spec = task.spec
    staged = staging.stage(task, con=con)
    table = staged.eval.x.table()
    frame = as_pandas(table)  # dtypes by the schema: a missing value changes none
    labels = pd.Series(staged.eval.y, name=spec.label)
    flags = [f.name for f in table.schema if pa.types.is_boolean(f.type)]
    if kind_of(task.staging.label_dtype) == BOOLEAN:
        flags.append(spec.label)
    classes = _classes(labels, task.staging.label_levels, task.describe.private)
    admission = Admission(
        counts={"eval": SplitCounts(rows=len(frame), classes=classes)},
        row_sets=evidence.write_row_sets(Path("."), {"admitted": staged.eval_rows}),  # type: ignore[arg-type]
        table_rows=evidence.table_rows(task.staging),
    )
    if not channel.admit(admission).proceed:
        return None
    keep = task.describe.max_categories + 1
    shown = {name: frame[name] for name in frame.columns}
    if classes is None:
        shown = {spec.label: labels, **shown}
    shown = {name: _true_false(series) if name in flags else series for name, series in shown.items()}
    fixed = {name: TRUE_FALSE for name in flags if name in shown}
    # An undeclared true/false column is still sketched (as a text column, its result unused): the
    # parent charges and checks the sketch by the columns the owner declared nothing for.
    edges, levels = public_choices(task.describe, shown, channel) if task.describe.private else ({}, {})
    levels = {**levels, **fixed}
    declared = set(task.describe.ranges) if task.describe.private else set()
    columns = [
        _numeric(name, series, edges.get(name), name in declared and name in edges)
        if _is_numeric(series)
        else _categorical(name, series, keep, levels.get(name))
        for name, series in shown.items()
    ]
    return DescribeReport(rows=len(frame), classes=classes, columns=columns)


def public_choices(
    options: DescribeOptions, shown: dict[str, pd.Series], channel: Channel
) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Per column, the edges and the levels to count (the noisy modes): declared, else from one sketch
    that the parent noises and charges (module docstring)."""
    edges = {
        n: range_grid(*options.ranges[n]) for n in shown if n in options.ranges and _is_numeric(shown[n])
    }
    levels = {n: list(options.levels[n]) for n in shown if n in options.levels and not _is_numeric(shown[n])}
    numeric = [n for n, s in shown.items() if _is_numeric(s) and n not in edges]
    text = [n for n, s in shown.items() if not _is_numeric(s) and n not in levels]
    if not numeric and not text:
        return edges, levels
    if options.sketch_rho <= 0:  # nothing was charged for a sketch: one open bin, every value in `other`
        return {**edges, **{n: [] for n in numeric}}, {**levels, **{n: [] for n in text}}
    counted = {
        n: np.bincount(
            np.searchsorted(WIDE_GRID, shown[n].dropna().to_numpy(dtype=float), side="right"),
            minlength=len(WIDE_GRID) + 1,
        )
        for n in numeric
    }
    found = {n: shown[n].dropna().astype(str).value_counts().sort_index() for n in text}
    # Each text column's counts end in a zero that no row moves, so that the release is never empty: an
    # empty one failed where one row with a value made it pass, a membership oracle.
    values = [float(v) for n in numeric for v in counted[n]] + [
        float(v) for n in text for v in [*found[n], 0]
    ]
    l2, rho = math.sqrt(len(numeric) + len(text)), options.sketch_rho
    noisy = np.asarray(channel.noise(values, l2, rho), dtype=float)
    sigma = gaussian_sigma(l2, rho)
    at = 0
    for n in numeric:
        bins = noisy[at : at + len(WIDE_GRID) + 1]
        edges[n] = nice_grid(*noisy_middle(bins, WIDE_GRID, EMPTY_SIGMAS * sigma))
        at += len(WIDE_GRID) + 1
    threshold = selection_threshold(sigma, options.delta, len(text))
    for n in text:
        level_noise = noisy[at : at + len(found[n])]
        at += len(found[n]) + 1
        kept = np.flatnonzero(level_noise > threshold)
        kept = kept[np.argsort(-level_noise[kept], kind="stable")][: options.max_categories + 1]
        levels[n] = [str(found[n].index[i]) for i in kept]
    return edges, levels
