"""Scores of predictions on evaluation rows: the same for every model family.

Two kinds. `score` gives exact metrics as scikit-learn defines them (mode rules releases them rounded):
its regression metrics, and a classifier's AUC, log loss, accuracy, F1 and confusion counts computed here
from the predictions' ranks and one confusion matrix (scikit-learn's input checks on each call cost a
small job about 5 ms; tests/test_partials.py holds these to scikit-learn's). `stats`
gives the sums a differentially private release is built from: each row's contribution is clipped, so
one row moves each sum by a known amount whatever the model is (log loss: probabilities clipped to
[0.01, 0.99], so a row adds at most ln 100; regression: residuals clipped to the label's range). A
metric that needs both classes is `None` when an evaluation set holds one class only, whatever the
cause: no failure depends on the rows' values.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

PROB_CLIP = 0.01
LOSS_CLIP = math.log(1 / PROB_CLIP)  # the most one row adds to a clipped log-loss sum


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _probabilities(task: str, pred: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    if task == "binary":
        prob = pred if pred.ndim == 1 else pred[:, 1]
        return np.column_stack([1 - prob, prob])
    return pred.reshape(n, n_classes)


def _auc(y: np.ndarray, prob: np.ndarray) -> float | None:
    """scikit-learn's ROC AUC, as the Mann-Whitney statistic: the chance that a positive row's score
    outranks a negative one's, ties counting half (average ranks); None unless both classes occur."""
    positive = np.asarray(y) == 1
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if not n_pos or not n_neg:
        return None
    if not np.isfinite(prob).all():
        raise ValueError("the scores are not all finite")  # as scikit-learn refuses them
    _, inverse, counts = np.unique(prob, return_inverse=True, return_counts=True)
    ranks = np.cumsum(counts) - (counts - 1) / 2  # each distinct score's average rank, from 1
    rank_sum = float(ranks[inverse.ravel()][positive].sum())
    return _finite((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def score(task: str, y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict:
    """Exact metrics and confusion counts. Raises ValueError where scikit-learn would: no rows, a label
    outside the classes, a probability outside [0, 1]."""
    if task == "regression":
        return {
            "metrics": {
                "rmse": _finite(math.sqrt(skm.mean_squared_error(y, pred))),
                "mae": _finite(skm.mean_absolute_error(y, pred)),
                "r2": _finite(skm.r2_score(y, pred)) if len(y) > 1 else None,
            }
        }
    k = max(n_classes, 2)
    truth = np.asarray(y).astype(np.int64)
    if len(truth) == 0 or (truth != y).any() or truth.min() < 0 or truth.max() >= k:
        raise ValueError("the labels are not the classes' codes")
    if task == "binary":
        # scikit-learn's log loss of P(class 1) clipped to [1e-15, 1 - 1e-15], as two columns
        positive = np.clip(pred if pred.ndim == 1 else pred[:, 1], 1e-15, 1 - 1e-15)
        prob = np.column_stack([1 - positive, positive])
    else:
        prob = _probabilities(task, pred, len(y), n_classes)
    if prob.max() > 1 or prob.min() < 0:
        raise ValueError("the predictions are not probabilities")
    predicted = prob.argmax(axis=1)
    confusion = np.bincount(truth * k + predicted, minlength=k * k).reshape(k, k)
    eps = np.finfo(prob.dtype).eps  # scikit-learn clips to its dtype's resolution, in its dtype
    loss = _finite(float(np.mean(-np.log(np.clip(prob[np.arange(len(truth)), truth], eps, 1 - eps)))))
    accuracy = _finite(float(np.trace(confusion) / len(truth)))
    if task == "binary":
        metrics = {
            "auc": _auc(y, pred if pred.ndim == 1 else pred[:, 1]),
            "log_loss": loss,
            "accuracy": accuracy,
            "f1": binary_f1(confusion),
        }
    else:
        metrics = {"log_loss": loss, "accuracy": accuracy, "f1_macro": macro_f1(confusion)}
    return {"metrics": metrics, "confusion": confusion.tolist()}


def binary_f1(confusion: np.ndarray) -> float:
    """scikit-learn's F1 of class 1 (0 where it has no true or predicted row)."""
    tp, fp, fn = confusion[1, 1], confusion[0, 1], confusion[1, 0]
    return float(2 * tp / (2 * tp + fp + fn)) if 2 * tp + fp + fn else 0.0


def macro_f1(confusion: np.ndarray) -> float:
    """scikit-learn's macro F1: the mean F1 of the classes that occur as truth or prediction."""
    tp = np.diag(confusion).astype(float)
    truth, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    present = (truth + predicted) > 0
    f1 = np.divide(2 * tp, truth + predicted, out=np.zeros_like(tp), where=present)
    return float(f1[present].mean()) if present.any() else 0.0


def row_losses(
    task: str, y: np.ndarray, pred: np.ndarray, n_classes: int, residual_clip: float | None
) -> np.ndarray:
    """Each row's clipped loss: log loss of the true class for classifiers, squared residual for
    regressors (NaN for regressors without a residual clip)."""
    if task == "regression":
        if residual_clip is None:
            return np.full(len(y), np.nan)
        return np.clip(np.abs(y - pred), 0, residual_clip) ** 2
    prob = _probabilities(task, pred, len(y), n_classes)
    true = np.clip(prob[np.arange(len(y)), y.astype(int)], PROB_CLIP, 1 - PROB_CLIP)
    return -np.log(true)


def loss_clip(task: str, residual_clip: float | None) -> float | None:
    """The most one row adds to a sum of `row_losses`."""
    if task == "regression":
        return None if residual_clip is None else residual_clip**2
    return LOSS_CLIP


def stats(
    task: str,
    y: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    label_range: tuple | None,
    scored: dict | None = None,
) -> dict:
    """The clipped sums a DP release is computed from, and how far one row can move each. `scored`:
    what `score` gave for the same rows, whose AUC and confusion counts are taken, not computed again."""
    n = len(y)
    if task == "regression":
        if label_range is None:
            return {"n": n}
        low, high = label_range
        clip = high - low
        centre = (low + high) / 2
        y_clipped = np.clip(y, low, high) - centre
        residual = np.clip(np.abs(y - pred), 0, clip)
        return {
            "n": n,
            "sse": float((residual**2).sum()),
            "sae": float(residual.sum()),
            "sum_y": float(y_clipped.sum()),
            "sum_y2": float((y_clipped**2).sum()),
            "residual_clip": clip,
            "label_half_range": clip / 2,
        }
    prob = _probabilities(task, pred, n, n_classes)
    predicted = prob.argmax(axis=1)
    confusion = scored["confusion"] if scored is not None else None
    out = {
        "n": n,
        "correct": int((predicted == y).sum()),
        "loss_sum": float(row_losses(task, y, pred, n_classes, None).sum()),
        "loss_clip": LOSS_CLIP,
        "confusion": confusion
        if confusion is not None
        else skm.confusion_matrix(y, predicted, labels=list(range(max(n_classes, 2)))).tolist(),
    }
    if task == "binary":
        out["auc"] = scored["metrics"]["auc"] if scored is not None else _auc(y, prob[:, 1])
    return out


def isolated_rows(task: str, pred: np.ndarray, n: int, n_classes: int, width: float = 0.25) -> int:
    """How many rows a model's predictions set apart from the largest group of alike predictions.

    Predictions are binned (logit width 0.25 for classifiers, a quarter of their spread for regressors);
    a model confident on a handful of rows only shows up as a small number here."""
    if n == 0:
        return 0
    spread = float(np.std(pred)) if task == "regression" else None
    _, counts = np.unique(isolation_keys(task, pred, n, n_classes, spread, width), return_counts=True)
    return int(n - counts.max())


def isolation_keys(
    task: str, pred: np.ndarray, n: int, n_classes: int, spread: float | None, width: float = 0.25
) -> np.ndarray:
    """The bin of each prediction `isolated_rows` groups by; a regressor's needs the spread (standard
    deviation) of all the predictions, which rows split over several partitions learn from their sums."""
    if task == "regression":
        return np.floor(pred / ((spread or 1.0) * width)).astype(np.int64)
    prob = np.clip(_probabilities(task, pred, n, n_classes), 1e-12, 1 - 1e-12)
    top = prob.max(axis=1)
    logit = np.log(top / (1 - top))
    return prob.argmax(axis=1) * 1_000_000 + np.floor(logit / width).astype(np.int64)
