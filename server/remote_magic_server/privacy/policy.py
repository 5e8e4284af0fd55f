"""The disclosure policy: a pure function from raw aggregates to what may leave the server.

No I/O, no state. Every number in a result passes through here: counts are suppressed below `min_count`
and rounded to `round_to`, metrics are rounded to 4 significant digits, cohorts below `min_rows` or with
a class below `min_class_rows` are refused. The output is the strict wire model, so nothing undeclared
(a string from the data, an extra field) can slip through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import (
    ClassCount,
    ConfusionMatrix,
    DroppedRows,
    History,
    JobResult,
    Rounds,
    SplitSummary,
    Summary,
)

from ..config.settings import SIGNIFICANT_DIGITS, Policy
from ..protocol import SplitCounts, TrainReport


def release_count(n: int, policy: Policy) -> int | None:
    """Suppress small counts (None), round the rest to the nearest multiple of `round_to`."""
    if n < policy.min_count:
        return None
    step = policy.round_to
    return int(step * math.floor(n / step + 0.5))


def round_metric(x: float) -> float:
    """Round to 4 significant digits; non-finite values are not releasable."""
    if not math.isfinite(x):
        raise Refusal("internal_error", "a metric could not be computed")
    if x == 0:
        return 0.0
    digits = SIGNIFICANT_DIGITS - int(math.floor(math.log10(abs(x)))) - 1
    return float(round(x, digits))


def check_cohort(counts: Mapping[str, SplitCounts], policy: Policy) -> None:
    """Refuse splits below `min_rows`, or with a class below `min_class_rows`."""
    for split in ("train", "eval"):
        if split not in counts:
            continue
        if counts[split].rows < policy.min_rows:
            move = "raise" if split == "eval" else "lower"  # the default 0.2 of 440 rows left 88 (rev11)
            raise Refusal(
                "cohort_too_small",
                f"the {split} set has fewer than {policy.min_rows} rows; widen the filter, or {move} the "
                "evaluation fraction (--eval-fraction, eval.fraction; the default is 0.2)",
            )
        classes = counts[split].classes
        if classes is not None and min(classes.values(), default=0) < policy.min_class_rows:
            raise Refusal(
                "class_too_small",
                f"a class has fewer than {policy.min_class_rows} rows in the {split} set",
            )
        if classes is not None and split == "train" and len(classes) < 2:
            raise Refusal("class_too_small", "the training set holds a single class")


def split_summary(counts: SplitCounts, policy: Policy) -> SplitSummary:
    """A split's rows and class counts as released; the total is the sum of the released cells."""
    classes = [
        ClassCount(label=label, count=release_count(n, policy))
        for label, n in sorted((counts.classes or {}).items())
    ]
    if classes:
        # The total is the sum of the released cells, so it cannot reveal a suppressed one (ACRO#198).
        return SplitSummary(rows=sum(c.count or 0 for c in classes) or None, classes=classes)
    return SplitSummary(rows=release_count(counts.rows, policy), classes=classes)


def dropped_rows(missing_label: int | None, policy: Policy) -> list[DroppedRows]:
    """The rows left out for a missing label, released like any count; none when they were not counted."""
    if missing_label is None:
        return []
    return [DroppedRows(reason="missing label", rows=release_count(missing_label, policy))]


def release(
    report: TrainReport,
    counts: Mapping[str, SplitCounts],
    policy: Policy,
    job_id: str,
    dataset: str,
    kind: str,
    missing_label: int | None = None,
) -> JobResult:
    """Build the releasable result from a worker's raw aggregates, or raise Refusal."""
    check_cohort(counts, policy)
    history = None
    if report.history is not None:
        h = report.history
        history = History(
            metric=h.metric, train=[round_metric(v) for v in h.train], eval=[round_metric(v) for v in h.eval]
        )
    confusion = None
    if report.confusion is not None:
        c = report.confusion
        confusion = ConfusionMatrix(
            labels=list(c.labels), counts=[[release_count(int(n), policy) for n in row] for row in c.counts]
        )
    return JobResult(
        job_id=job_id,
        dataset=dataset,
        kind=kind,  # type: ignore[arg-type]
        task=report.task,
        metrics={str(k): None if v is None else round_metric(float(v)) for k, v in report.metrics.items()},
        history=history,
        feature_importance={str(k): round_metric(float(v)) for k, v in report.feature_importance.items()},
        summary=Summary(
            train=split_summary(counts["train"], policy) if "train" in counts else None,
            eval=split_summary(counts["eval"], policy),
            dropped=dropped_rows(missing_label, policy),
        ),
        confusion_matrix=confusion,
        rounds=Rounds(**report.rounds.model_dump()),
        policy=policy.in_effect(),
        notes=[
            f"{name} is not available on these evaluation rows"
            for name, v in report.metrics.items()
            if v is None
        ],
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
