"""Metrics of predictions on evaluation rows, with scikit-learn: the same for every model family.

A family predicts (probabilities for classifiers, values for regressors); scoring turns predictions and
labels into raw metrics and confusion counts. Non-finite values become NaN here; the release desk
decides what, if anything, leaves.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else float("nan")


def score(task: str, y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict:
    if task == "regression":
        return {
            "metrics": {
                "rmse": _finite(math.sqrt(skm.mean_squared_error(y, pred))),
                "mae": _finite(skm.mean_absolute_error(y, pred)),
                "r2": _finite(skm.r2_score(y, pred)),
            }
        }
    if task == "binary":
        prob = pred if pred.ndim == 1 else pred[:, 1]
        predicted = (prob >= 0.5).astype(int)
        metrics = {
            "auc": _finite(skm.roc_auc_score(y, prob)),
            "log_loss": _finite(skm.log_loss(y, np.clip(prob, 1e-15, 1 - 1e-15), labels=[0, 1])),
            "accuracy": _finite(skm.accuracy_score(y, predicted)),
            "f1": _finite(skm.f1_score(y, predicted, zero_division=0)),
        }
    else:
        prob = pred.reshape(len(y), n_classes)
        predicted = prob.argmax(axis=1)
        metrics = {
            "log_loss": _finite(skm.log_loss(y, prob, labels=list(range(n_classes)))),
            "accuracy": _finite(skm.accuracy_score(y, predicted)),
            "f1_macro": _finite(skm.f1_score(y, predicted, average="macro", zero_division=0)),
        }
    confusion = skm.confusion_matrix(y, predicted, labels=list(range(max(n_classes, 2))))
    return {"metrics": metrics, "confusion": confusion.tolist()}
