"""Release a describe request's raw aggregates: class balance, missing counts, histograms, categories.

Pure, like policy.py. Every count goes through the same small-count rule and rounding as a training
result; histogram bins are merged with their neighbours until each holds `min_count` rows, and the
outer bins are open-ended, so no minimum or maximum of a column is ever shown. Categories below
`min_count` are folded into an `other` count and their names never leave (judged on the exact count,
so noise cannot lift a single row's value into view). In DP mode an OpenDP
mechanism (passed in as `noise`) perturbs every count first; suppression and rounding follow, as
post-processing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from remote_magic.wire import CategoryCount, ClassCount, ColumnDescription, DescribeResult, HistogramBin

from .policy import PolicyRefusal, release_count, round_metric

MAX_NAME_CHARS = 80
Noise = Callable[[list[int]], list[int]]


def sensitivity(raw: Mapping) -> int:
    """How many released counts one row can change: the total, its class, and one cell per column."""
    return 1 + (1 if raw.get("classes") is not None else 0) + len(raw["columns"])


def _flatten(raw: Mapping) -> list[int]:
    counts = [int(raw["rows"])]
    counts += [int(n) for n in (raw.get("classes") or {}).values()]
    for col in raw["columns"]:
        counts.append(int(col["missing"]))
        if col["kind"] == "numeric":
            counts += [int(n) for n in col["histogram"]["counts"]]
        else:
            counts += [int(n) for n in col["categories"].values()] + [int(col.get("rest", 0))]
    return counts


def _unflatten(raw: Mapping, counts: list[int]) -> dict:
    it = iter(max(0, int(n)) for n in counts)
    out: dict = {"rows": next(it), "columns": []}
    if raw.get("classes") is not None:
        out["classes"] = {label: next(it) for label in raw["classes"]}
    for col in raw["columns"]:
        new = {"name": col["name"], "kind": col["kind"], "missing": next(it)}
        if col["kind"] == "numeric":
            edges = col["histogram"]["edges"]
            new["histogram"] = {"edges": edges, "counts": [next(it) for _ in range(len(edges) + 1)]}
        else:
            new["categories"] = {value: next(it) for value in col["categories"]}
            new["rest"] = next(it)
        out["columns"].append(new)
    return out


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


def _column(col: Mapping, exact: Mapping, rows: int | None, policy: Mapping) -> ColumnDescription:
    missing = release_count(col["missing"], policy)
    if col["kind"] == "numeric":
        bins = merge_bins(col["histogram"]["edges"], col["histogram"]["counts"], policy["min_count"])
        return ColumnDescription(
            name=col["name"],
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
    shown, small = [], int(col.get("rest", 0))
    for value, n in sorted(col["categories"].items(), key=lambda kv: (-kv[1], kv[0])):
        # A name is shown only if its exact count clears the threshold too: noise may lift a category
        # held by one row above it, and the name itself is that row's value.
        large = n >= policy["min_count"] and exact["categories"][value] >= policy["min_count"]
        if large and len(shown) < policy["max_categories"]:
            shown.append(CategoryCount(value=str(value)[:MAX_NAME_CHARS], count=release_count(n, policy)))
        else:
            small += n
    return ColumnDescription(
        name=col["name"],
        kind="categorical",
        missing=missing,
        missing_rate=_rate(missing, rows),
        categories=shown,
        other=release_count(small, policy) if small else None,
    )


def release_describe(
    raw: Mapping, policy: Mapping, dataset: str, label: str, noise: Noise | None = None
) -> DescribeResult:
    """Check the cohort on the exact counts, perturb (DP mode), then suppress, merge and round."""
    if raw["rows"] < policy["min_rows"]:
        raise PolicyRefusal(
            "cohort_too_small", f"the admitted set has fewer than {policy['min_rows']} rows; widen the filter"
        )
    classes = raw.get("classes")
    if classes is not None and min(classes.values(), default=0) < policy["min_class_rows"]:
        raise PolicyRefusal("class_too_small", f"a class has fewer than {policy['min_class_rows']} rows")
    counts = _unflatten(raw, noise(_flatten(raw)) if noise else _flatten(raw))
    released_classes = None
    if classes is not None:
        released_classes = [
            ClassCount(label=str(k)[:MAX_NAME_CHARS], count=release_count(n, policy))
            for k, n in sorted(counts["classes"].items())
        ]
        rows = sum(c.count or 0 for c in released_classes) or None
    else:
        rows = release_count(counts["rows"], policy)
    return DescribeResult(
        dataset=dataset,
        label=label,
        rows=rows,
        classes=released_classes,
        columns=[_column(col, ex, rows, policy) for col, ex in zip(counts["columns"], raw["columns"])],
    )
