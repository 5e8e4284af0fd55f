"""Scores of rows split over partitions: per-partition sums that merge, and the scores made from them.

A cluster keeps its rows; each partition returns sums only. `partial` gives one partition's sums of
its evaluation rows (the exact metrics' sums, `scoring.stats`'s clipped sums, and for a binary model a
histogram of predicted probabilities for the AUC); `merge` adds partials; `finish` turns the merged
sums into what `scoring.score` and `scoring.stats` give for all the rows at once. Everything is exact
but the AUC, which ranks predictions by `AUC_BINS` bins of probability (ties within a bin count half),
so it may differ from scikit-learn's in the fourth decimal.

`isolation` does the same for `scoring.isolated_rows` (a histogram of prediction bins; a regressor's bins
need the spread of all the predictions first: `moments`, merged, then `spread`), and `add_leaves` /
`merge_leaves` / `fewest_in_a_leaf` for the rows in each leaf of a tree model (per-tree counts by leaf
id, from batches and partitions alike).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from . import scoring

AUC_BINS = 1 << 16
LOG_LOSS_EPS = 1e-15  # what scikit-learn clips probabilities to in its log loss
CONSTANTS = {"loss_clip", "residual_clip", "label_half_range"}  # the same in every partition: not summed


def partial(task: str, y: np.ndarray, pred: np.ndarray, n_classes: int, label_range: tuple | None) -> dict:
    """One partition's mergeable sums of its evaluation rows."""
    n = len(y)
    clipped = scoring.stats(task, y, pred, n_classes, label_range) if n else {"n": 0}
    clipped.pop("auc", None)
    out: dict = {"n": n, "clipped": clipped}
    if task == "regression":
        residual = y - pred
        out.update(
            sse=float((residual**2).sum()),
            sae=float(np.abs(residual).sum()),
            sum_y=float(y.sum()),
            sum_y2=float((y**2).sum()),
        )
        return out
    k = max(n_classes, 2)
    prob = scoring._probabilities(task, pred, n, n_classes) if n else np.zeros((0, k))
    predicted = prob.argmax(axis=1)
    true = np.clip(prob[np.arange(n), y.astype(int)], LOG_LOSS_EPS, 1 - LOG_LOSS_EPS) if n else np.zeros(0)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y.astype(int), predicted), 1)
    out.update(log_loss_sum=float(-np.log(true).sum()), confusion=confusion.tolist())
    if task == "binary":
        # clipped first: a `binary:logitraw` margin is no probability; below 0 its bin was negative, and
        # counting the bins failed exactly when a row had such a margin
        bins = np.minimum((np.clip(prob[:, 1], 0, 1) * AUC_BINS).astype(np.int64), AUC_BINS - 1)
        positive = y.astype(int) == 1
        out["auc_positive"] = _sparse(np.bincount(bins[positive], minlength=AUC_BINS))
        out["auc_negative"] = _sparse(np.bincount(bins[~positive], minlength=AUC_BINS))
    return out


def _sparse(counts: np.ndarray) -> dict[int, int]:
    return {int(i): int(counts[i]) for i in np.flatnonzero(counts)}


def merge(parts: list[dict]) -> dict:
    """The sums of several partitions' partials."""
    merged: dict = {}
    for part in parts:
        merged = _add(merged, part)  # type: ignore[assignment]
    return merged


def _add(a: object, b: object, key: str = "") -> object:
    if a is None or key in CONSTANTS:
        return b if a is None else a
    if isinstance(b, dict):
        out = dict(a)  # type: ignore[call-overload]
        for k, v in b.items():
            out[k] = _add(out.get(k), v, str(k))
        return out
    if isinstance(b, list):
        return [_add(x, y) for x, y in zip(a, b)]  # type: ignore[call-overload]
    return a + b  # type: ignore[operator]


def finish(merged: dict, task: str, n_classes: int) -> tuple[dict, dict]:
    """What `scoring.score` and `scoring.stats` would give on all the partitions' rows at once."""
    n = merged["n"]
    clipped = dict(merged["clipped"])
    if task == "regression":
        mean_y = merged["sum_y"] / n if n else 0.0
        total = merged["sum_y2"] - n * mean_y**2
        r2 = None
        if n > 1:
            r2 = (1.0 if merged["sse"] == 0 else 0.0) if total <= 0 else 1 - merged["sse"] / total
        metrics = {
            "rmse": _finite(math.sqrt(merged["sse"] / n)) if n else None,
            "mae": _finite(merged["sae"] / n) if n else None,
            "r2": _finite(r2) if r2 is not None else None,
        }
        return {"metrics": metrics}, clipped
    confusion = np.array(merged["confusion"])
    correct = int(np.trace(confusion))
    if task == "binary":
        auc = _auc(merged.get("auc_positive", {}), merged.get("auc_negative", {}))
        tp, fp, fn = confusion[1, 1], confusion[0, 1], confusion[1, 0]
        metrics = {
            "auc": auc,
            "log_loss": _finite(merged["log_loss_sum"] / n) if n else None,
            "accuracy": _finite(correct / n) if n else None,
            "f1": _finite(2 * tp / (2 * tp + fp + fn)) if 2 * tp + fp + fn else 0.0,
        }
        clipped["auc"] = auc
    else:
        metrics = {
            "log_loss": _finite(merged["log_loss_sum"] / n) if n else None,
            "accuracy": _finite(correct / n) if n else None,
            "f1_macro": _macro_f1(confusion),
        }
    return {"metrics": metrics, "confusion": confusion.tolist()}, clipped


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _auc(positive: dict, negative: dict) -> float | None:
    """The probability that a positive row outranks a negative one (ties: half), over the bins."""
    pos = np.zeros(AUC_BINS)
    neg = np.zeros(AUC_BINS)
    for i, c in positive.items():
        pos[int(i)] = c
    for i, c in negative.items():
        neg[int(i)] = c
    n_pos, n_neg = pos.sum(), neg.sum()
    if not n_pos or not n_neg:
        return None
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float((pos * (below + neg / 2)).sum() / (n_pos * n_neg))


def _macro_f1(confusion: np.ndarray) -> float:
    """scikit-learn's macro F1: the mean F1 of the classes that occur as truth or prediction."""
    tp = np.diag(confusion).astype(float)
    truth, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    present = (truth + predicted) > 0
    f1 = np.divide(2 * tp, truth + predicted, out=np.zeros_like(tp), where=(truth + predicted) > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def moments(pred: np.ndarray) -> dict:
    """Sums a regressor's prediction spread is made from (merge them, then `spread`)."""
    return {"n": len(pred), "sum": float(pred.sum()), "sum2": float((pred**2).sum())}


def spread(merged: dict) -> float:
    n = merged["n"]
    if not n:
        return 0.0
    mean = merged["sum"] / n
    return math.sqrt(max(merged["sum2"] / n - mean**2, 0.0))


def isolation(task: str, pred: np.ndarray, n_classes: int, spread_: float | None) -> Counter:
    """How many of a partition's rows fall in each prediction bin of `scoring.isolated_rows`."""
    if not len(pred):
        return Counter()
    keys = scoring.isolation_keys(task, pred, len(pred), n_classes, spread_)
    values, counts = np.unique(keys, return_counts=True)
    return Counter({int(v): int(c) for v, c in zip(values, counts)})


def isolated(histogram: Counter) -> int:
    """`scoring.isolated_rows` of the rows behind a merged histogram."""
    total = sum(histogram.values())
    return int(total - max(histogram.values())) if total else 0


def add_leaves(totals: list[np.ndarray], tree: int, leaf_ids: np.ndarray) -> None:
    """Add rows reaching each leaf of one tree (by leaf id) to that tree's running counts."""
    _add_counts(totals, tree, np.bincount(leaf_ids.astype(np.int64)))


def merge_leaves(shares: list[list]) -> list[np.ndarray]:
    """Several partitions' per-tree leaf counts as one."""
    totals: list[np.ndarray] = []
    for share in shares:
        for tree, counts in enumerate(share):
            _add_counts(totals, tree, np.asarray(counts, dtype=np.int64))
    return totals


def _add_counts(totals: list[np.ndarray], tree: int, counts: np.ndarray) -> None:
    while len(totals) <= tree:
        totals.append(np.zeros(0, dtype=np.int64))
    if len(counts) > len(totals[tree]):
        totals[tree] = np.pad(totals[tree], (0, len(counts) - len(totals[tree])))
    totals[tree][: len(counts)] += counts


def fewest_in_a_leaf(totals: list[np.ndarray]) -> int | None:
    """The fewest rows in any leaf that rows reach, over the counted trees; None when none were counted."""
    counted = [c[c > 0] for c in totals if (c > 0).any()]
    return int(min(c.min() for c in counted)) if counted else None
