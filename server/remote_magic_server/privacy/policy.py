"""The disclosure policy: a pure function from raw aggregates to what may leave the server.

No I/O, no state. Every number in a result passes through here: counts are suppressed below `min_count`
and rounded to `round_to`, metrics are rounded to 4 significant digits, cohorts below `min_rows` or with
a class below `min_class_rows` are refused. The output is the strict wire model, so nothing undeclared
(a string from the data, an extra field) can slip through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from remote_magic.wire import (
    ClassCount,
    ConfusionMatrix,
    History,
    JobResult,
    Rounds,
    SplitSummary,
    Summary,
)

SIGNIFICANT_DIGITS = 4


class PolicyRefusal(Exception):
    """The policy refuses a release; the message names the rule, never a count or a value."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def release_count(n: int, policy: Mapping[str, int]) -> int | None:
    """Suppress small counts (None), round the rest to the nearest multiple of `round_to`."""
    if n < policy["min_count"]:
        return None
    step = policy["round_to"]
    return int(step * math.floor(n / step + 0.5))


def round_metric(x: float) -> float:
    """Round to 4 significant digits; non-finite values are not releasable."""
    if not math.isfinite(x):
        raise PolicyRefusal("internal_error", "a metric could not be computed")
    if x == 0:
        return 0.0
    digits = SIGNIFICANT_DIGITS - int(math.floor(math.log10(abs(x)))) - 1
    return float(round(x, digits))


def check_cohort(counts: Mapping[str, Mapping], policy: Mapping[str, int]) -> None:
    """Refuse splits below `min_rows`, or with a class below `min_class_rows`."""
    for split in ("train", "eval"):
        if split not in counts:
            continue
        if counts[split]["rows"] < policy["min_rows"]:
            raise PolicyRefusal(
                "cohort_too_small",
                f"the {split} set has fewer than {policy['min_rows']} rows; widen the filter or the split",
            )
        classes = counts[split].get("classes")
        if classes is not None and min(classes.values(), default=0) < policy["min_class_rows"]:
            raise PolicyRefusal(
                "class_too_small",
                f"a class has fewer than {policy['min_class_rows']} rows in the {split} set",
            )
        if classes is not None and split == "train" and len(classes) < 2:
            raise PolicyRefusal("class_too_small", "the training set holds a single class")


def _split(counts: Mapping, policy: Mapping[str, int]) -> SplitSummary:
    classes = [
        ClassCount(label=label, count=release_count(n, policy))
        for label, n in sorted(counts.get("classes", {}).items())
    ]
    if classes:
        # The total is the sum of the released cells, so it cannot reveal a suppressed one (ACRO#198).
        return SplitSummary(rows=sum(c.count or 0 for c in classes) or None, classes=classes)
    return SplitSummary(rows=release_count(counts["rows"], policy), classes=classes)


def release(raw: Mapping, policy: Mapping[str, int], job_id: str, dataset: str, kind: str) -> JobResult:
    """Build the releasable result from a worker's raw aggregates, or raise PolicyRefusal."""
    counts = raw["counts"]
    check_cohort(counts, policy)
    history = None
    if raw.get("history"):
        h = raw["history"]
        history = History(
            metric=str(h["metric"]),
            train=[round_metric(v) for v in h["train"]],
            eval=[round_metric(v) for v in h["eval"]],
        )
    confusion = None
    if raw.get("confusion"):
        c = raw["confusion"]
        confusion = ConfusionMatrix(
            labels=[str(label) for label in c["labels"]],
            counts=[[release_count(int(n), policy) for n in row] for row in c["counts"]],
        )
    return JobResult(
        job_id=job_id,
        dataset=dataset,
        kind=kind,
        task=raw["task"],
        metrics={str(k): round_metric(float(v)) for k, v in raw["metrics"].items()},
        history=history,
        feature_importance={str(k): round_metric(float(v)) for k, v in raw["feature_importance"].items()},
        summary=Summary(
            train=_split(counts["train"], policy) if "train" in counts else None,
            eval=_split(counts["eval"], policy),
        ),
        confusion_matrix=confusion,
        rounds=Rounds(**{k: int(v) for k, v in raw["rounds"].items()}),
    )


def release_progress_metric(latest: Mapping[str, Mapping[str, float]]) -> dict | None:
    """The newest train/eval metric of a running job, rounded like every released metric."""
    if not latest:
        return None
    name = next(iter(latest.get("eval") or latest.get("train") or {}), None)
    if name is None:
        return None
    point: dict = {"name": str(name)}
    for split in ("train", "eval"):
        value = latest.get(split, {}).get(name)
        if value is not None and math.isfinite(value):
            point[split] = round_metric(float(value))
    return point
