"""Scores of predictions on evaluation rows: the same for every model family.

Two kinds. `score` gives exact metrics with scikit-learn (mode rules releases them rounded). `stats`
gives the sums a differentially private release is built from: each row's contribution is clipped, so
one row moves each sum by a known amount whatever the model is (log loss: probabilities clipped to
[0.01, 0.99], so a row adds at most ln 100; regression: residuals clipped to the label's range). A
metric that needs both classes is `None` when an evaluation set holds one class only, whatever the
cause: no failure depends on the rows' values. Both read a model's predictions through `bounded`, so
no prediction fails them either.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

PROB_CLIP = 0.01
LOSS_CLIP = math.log(1 / PROB_CLIP)  # the most one row adds to a clipped log-loss sum
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the largest prediction XGBoost can make short of inf


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def bounded(task: str, pred: np.ndarray, n_classes: int, label_range: tuple | None) -> np.ndarray:
    """A model's predictions as every score reads them: finite, and a regression's within the owner's
    declared label range.

    Any model may be scored, and a finite model can still predict inf or NaN for the rows that reach
    one leaf: a `count:poisson` (or gamma, tweedie) Booster with a leaf of 100 predicts exp(100), inf in
    float32. Scoring such rows failed, so in mode dp a job ended `not_released` exactly when a row the
    analyst marked was among the evaluation rows: membership for a job's cost. Refusing exp-link
    objectives would take counts and costs away from a data scientist; reading each prediction as the
    nearest value the label can take is what they would do themselves with a bounded target. So a
    regression's prediction is clipped to the declared range (the noisy modes clip the labels to it, and
    `stats` each residual to its width, the clip the release's sensitivity assumes), inf at its ends and
    NaN at its centre; without a range (no noisy regression metric is released then), NaN is 0 and inf
    float32's largest value. A classifier's NaN is the uniform probability and an infinite score
    float32's largest value (a `binary:logitraw` margin keeps its rank). Finite predictions of a
    classifier, and a regression's within the range, are unchanged, so exact scores are the model's."""
    if task == "regression":
        if label_range is None:
            return np.nan_to_num(pred, nan=0.0, posinf=FLOAT32_MAX, neginf=-FLOAT32_MAX)
        low, high = label_range
        return np.clip(np.nan_to_num(pred, nan=(low + high) / 2, posinf=high, neginf=low), low, high)
    return np.nan_to_num(pred, nan=1 / max(n_classes, 2), posinf=FLOAT32_MAX, neginf=-FLOAT32_MAX)


def _probabilities(task: str, pred: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    if task == "binary":
        prob = pred if pred.ndim == 1 else pred[:, 1]
        return np.column_stack([1 - prob, prob])
    return pred.reshape(n, n_classes)


def _auc(y: np.ndarray, prob: np.ndarray) -> float | None:
    return _finite(skm.roc_auc_score(y, prob)) if len(np.unique(y)) == 2 else None


def score(task: str, y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict:
    """Exact metrics and confusion counts (sklearn.metrics)."""
    if task == "regression":
        return {
            "metrics": {
                "rmse": _finite(math.sqrt(skm.mean_squared_error(y, pred))),
                "mae": _finite(skm.mean_absolute_error(y, pred)),
                "r2": _finite(skm.r2_score(y, pred)) if len(y) > 1 else None,
            }
        }
    prob = _probabilities(task, pred, len(y), n_classes)
    predicted = prob.argmax(axis=1)
    classes = list(range(max(n_classes, 2)))
    if task == "binary":
        metrics = {
            "auc": _auc(y, prob[:, 1]),
            "log_loss": _finite(skm.log_loss(y, np.clip(prob[:, 1], 1e-15, 1 - 1e-15), labels=[0, 1])),
            "accuracy": _finite(skm.accuracy_score(y, predicted)),
            "f1": _finite(skm.f1_score(y, predicted, zero_division=0)),
        }
    else:
        metrics = {
            "log_loss": _finite(skm.log_loss(y, prob, labels=classes)),
            "accuracy": _finite(skm.accuracy_score(y, predicted)),
            "f1_macro": _finite(skm.f1_score(y, predicted, average="macro", zero_division=0)),
        }
    confusion = skm.confusion_matrix(y, predicted, labels=classes)
    return {"metrics": metrics, "confusion": confusion.tolist()}


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
