"""Release a describe request's raw aggregates: class balance, missing counts, histograms, categories.

Pure, like policy.py. Every count goes through the same small-count rule and rounding as a training
result; histogram bins are merged with their neighbours until each holds `min_count` rows, and the
outer bins are open-ended, so no minimum or maximum of a column is ever shown. Categories below
`min_count` are folded into an `other` count and their names never leave.

In mode rules the edges and the categories shown come from the exact rows (a name is shown only if its
exact count clears `min_count`). In the noisy modes they are public or DP before any count is taken
(the worker, `worker/describe_task.py`): edges from the owner's declared range, else from a DP sketch
(a noisy histogram over a fixed public grid, charged `dp_rho_describe_sketch`); categories from the declared
levels, else those whose noisy count clears a threshold (a stable histogram). An OpenDP mechanism
(passed in as `noise`) then perturbs every count; suppression and rounding follow, as post-processing,
and read only the noisy counts.
"""

from __future__ import annotations

from collections.abc import Callable

from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import (
    CategoryCount,
    ClassCount,
    ColumnDescription,
    DescribeResult,
    HistogramBin,
)

from ..config.settings import Policy
from ..protocol import ColumnReport, DescribeReport, Histogram, SplitCounts
from .policy import release_count, round_metric

MAX_NAME_CHARS = 80
Noise = Callable[[list[int]], list[int]]


def sensitivity(report: DescribeReport) -> int:
    """How many released counts one row can change: the total, its class, and one cell per column."""
    return 1 + (1 if report.classes is not None else 0) + len(report.columns)


def check_cohort(counts: SplitCounts, policy: Policy, noisy: bool = False) -> None:
    """The admitted set of a describe request: at least `min_rows` rows and `min_class_rows` per class.
    On noisy counts the refusal says so, and that the describe was charged, as a job's refusal does."""
    said = " (noisy count; the describe was charged)" if noisy else ""
    if counts.rows < policy.min_rows:
        raise Refusal(
            "cohort_too_small",
            f"the admitted set has fewer than {policy.min_rows} rows{said}; widen the filter",
        )
    if counts.classes is not None and min(counts.classes.values(), default=0) < policy.min_class_rows:
        raise Refusal("class_too_small", f"a class has fewer than {policy.min_class_rows} rows{said}")


def _flatten(report: DescribeReport) -> list[int]:
    counts = [report.rows, *(report.classes or {}).values()]
    for col in report.columns:
        counts.append(col.missing)
        if col.kind == "numeric":
            counts += col.histogram.counts if col.histogram is not None else []
        else:
            counts += [*(col.categories or {}).values(), col.rest]
    return counts


def _unflatten(report: DescribeReport, counts: list[int]) -> DescribeReport:
    it = iter(max(0, int(n)) for n in counts)
    rows = next(it)
    classes = None if report.classes is None else {label: next(it) for label in report.classes}
    columns = []
    for col in report.columns:
        missing = next(it)
        if col.kind == "numeric":
            histogram = None
            if col.histogram is not None:
                edges = col.histogram.edges
                counts = [next(it) for _ in range(len(edges) + 1)]
                if col.histogram.closed:  # empty whatever the rows: their noise is dropped, not released
                    counts[0] = counts[-1] = 0
                histogram = Histogram(edges=edges, counts=counts, closed=col.histogram.closed)
            columns.append(col.model_copy(update={"missing": missing, "histogram": histogram}))
        else:
            categories = {value: next(it) for value in col.categories or {}}
            columns.append(
                col.model_copy(update={"missing": missing, "categories": categories, "rest": next(it)})
            )
    return DescribeReport(rows=rows, classes=classes, columns=columns)


def merge_bins(
    edges: list[float], counts: list[int], min_count: int
) -> list[tuple[float | None, float | None, int]]:
    """Merge adjacent bins (outer ones open-ended) until each holds at least `min_count` rows.

    `counts` has one more entry than `edges`: below the first edge, between edges, from the last one.
    Returns (lower, upper, count) with None for an open end; empty when all bins together are too few."""
    bounds = [None, *edges, None]
    merged: list[list] = []
    lower, acc = None, 0
    for i, n in enumerate(counts):
        acc += n
        if acc >= min_count:
            merged.append([lower, bounds[i + 1], acc])
            lower, acc = bounds[i + 1], 0
    if not merged:
        return []
    if acc:
        merged[-1][2] += acc
    merged[-1][1] = None
    return [(lo, hi, n) for lo, hi, n in merged]


def _rate(part: int | None, whole: int | None) -> float | None:
    if part is None or not whole:
        return None
    return round_metric(part / whole)


def _column(
    col: ColumnReport, exact: ColumnReport | None, rows: int | None, policy: Policy
) -> ColumnDescription:
    """One column's release from its (noisy) counts; `exact`: the exact report in mode rules, None in
    the noisy modes (nothing there may depend on an exact count)."""
    missing = release_count(col.missing, policy)
    if col.kind == "numeric":
        values = sum(col.histogram.counts) if col.histogram is not None else 0
        bins = (
            merge_bins(col.histogram.edges, col.histogram.counts, policy.min_count)
            if col.histogram is not None and (values if exact is None else exact.values) >= policy.min_count
            else []
        )
        if bins and col.histogram is not None and col.histogram.closed:  # a declared range's own ends
            ends = col.histogram.edges
            bins = [(ends[0] if lo is None else lo, ends[-1] if hi is None else hi, n) for lo, hi, n in bins]
        return ColumnDescription(
            name=col.name,
            kind="numeric",
            missing=missing,
            missing_rate=_rate(missing, rows),
            histogram=[
                HistogramBin(
                    lower=None if lo is None else round_metric(lo),
                    upper=None if hi is None else round_metric(hi),
                    count=release_count(n, policy),
                )
                for lo, hi, n in bins
            ]
            or None,
        )
    shown, small, cut = [], col.rest, False
    exact_counts = None if exact is None else exact.categories or {}
    for value, n in sorted((col.categories or {}).items(), key=lambda kv: (-kv[1], kv[0])):
        # Mode rules: a name is shown only if its exact count clears the threshold. The noisy modes
        # report only public or DP-selected names, so the noisy count alone decides there, and which
        # ones the cap keeps (the largest by noisy count).
        large = n >= policy.min_count and (exact_counts is None or exact_counts[value] >= policy.min_count)
        if large and len(shown) < policy.max_categories:
            shown.append(CategoryCount(value=str(value)[:MAX_NAME_CHARS], count=release_count(n, policy)))
        else:
            small += n
            cut = cut or large
    return ColumnDescription(
        name=col.name,
        kind="categorical",
        missing=missing,
        missing_rate=_rate(missing, rows),
        categories=shown,
        other=release_count(small, policy) if small else None,
        categories_cut=cut,
    )


def release_describe(
    report: DescribeReport,
    policy: Policy,
    dataset: str,
    label: str,
    noise: Noise | None = None,
    noisy_cohort: bool = False,
) -> DescribeResult:
    """Perturb (mode dp), check the cohort (on the noisy counts with `noisy_cohort`, so the refusal is a
    DP release too), then suppress, merge and round."""
    noisy = _unflatten(report, noise(_flatten(report)) if noise else _flatten(report))
    checked = noisy if noisy_cohort else report
    check_cohort(SplitCounts(rows=checked.rows, classes=checked.classes), policy, noisy_cohort)
    released_classes = None
    if noisy.classes is not None:
        released_classes = [
            ClassCount(label=str(k)[:MAX_NAME_CHARS], count=release_count(n, policy))
            for k, n in sorted(noisy.classes.items())
        ]
        rows = sum(c.count or 0 for c in released_classes) or None
    else:
        rows = release_count(noisy.rows, policy)
    return DescribeResult(
        dataset=dataset,
        label=label,
        rows=rows,
        classes=released_classes,
        columns=[
            _column(col, None if noise else ex, rows, policy)
            for col, ex in zip(noisy.columns, report.columns)
        ],
        policy=policy.in_effect(),
    )
