"""The in-process baseline of the server benchmarks: train with train and eval metrics per round, then
predict and compute the metrics the server reports, all in the calling process."""

from __future__ import annotations

import numpy as np
import xgboost as xgb
from sklearn import metrics as skm


def train_and_score(
    dtrain: xgb.DMatrix, deval: xgb.DMatrix, truth: np.ndarray, depth: int, rounds: int, threads: int
) -> float:
    """Train a binary classifier as the server would and score it; return its AUC."""
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": depth, "nthread": threads},
        dtrain,
        rounds,
        evals=[(dtrain, "train"), (deval, "eval")],
        verbose_eval=False,
    )
    prob = booster.predict(deval)
    predicted = (prob >= 0.5).astype(int)
    skm.log_loss(truth, prob), skm.accuracy_score(truth, predicted)
    skm.f1_score(truth, predicted), skm.confusion_matrix(truth, predicted)
    return float(skm.roc_auc_score(truth, prob))
