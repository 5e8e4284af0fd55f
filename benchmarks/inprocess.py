"""The in-process baselines of the server benchmarks, each the work a job of its mode does, all in the
calling process: XGBoost training with train and eval metrics per round (modes rules and dp_eval_only),
and the DP trainer (mode dp) with seeded NumPy noise of the scale OpenDP's would have; then predictions
and the metrics the server reports."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pyarrow as pa
import xgboost as xgb
from sklearn import metrics as skm

from remote_magic.families.base import Labels, PrivateOrder, Run, Split
from remote_magic.families.dpboost.family import FAMILY as DP_FAMILY
from remote_magic.families.partitions import one_machine
from remote_magic_server.privacy import dp
from remote_magic_server.protocol import NoiseAnswer, NoiseRequest


def _score(truth: np.ndarray, prob: np.ndarray) -> float:
    predicted = (prob >= 0.5).astype(int)
    skm.log_loss(truth, prob), skm.accuracy_score(truth, predicted)
    skm.f1_score(truth, predicted), skm.confusion_matrix(truth, predicted)
    return float(skm.roc_auc_score(truth, prob))


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
    return _score(truth, booster.predict(deval))


class SeededNoise:
    """The parent's noise as seeded NumPy draws: a Gaussian of scale bound / sqrt(2 rho) (what OpenDP's
    zCDP Gaussian has), a top-1 by Gumbel noise of the same scale."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def answer(self, ask: NoiseRequest) -> NoiseAnswer:
        scale = ask.bound / math.sqrt(2 * ask.rho)
        values = np.asarray(ask.values, dtype=np.float64)
        if ask.kind == "gaussian":
            return NoiseAnswer(values=list(values + self.rng.normal(0.0, scale, len(values))))
        return NoiseAnswer(index=int(np.argmax(values + self.rng.gumbel(0.0, scale, len(values)))))

    def noise(self, values: list[float], bound: float, rho: float) -> list[float]:
        return self.answer(NoiseRequest(kind="gaussian", values=values, bound=bound, rho=rho)).values or []

    def select(self, scores: np.ndarray, bound: float, rho: float) -> int:
        answer = self.answer(NoiseRequest(kind="top1", values=scores, bound=bound, rho=rho))
        assert answer.index is not None
        return answer.index


class OpenDPNoise:
    """The parent's noise as the release desk draws it (OpenDP's Gaussian and noisy top-1, privacy/dp.py):
    the part of a mode-dp job's time that is the price of real noise, not of the server. One per training;
    as the desk does, a training's first release (its sketch, a public question) is drawn once and kept
    for the next training that asks it on the same counts."""

    _kept: ClassVar[dict[tuple, list[float]]] = {}

    def __init__(self) -> None:
        self.first = True

    def noise(self, values: list[float], bound: float, rho: float) -> list[float]:
        first, self.first = self.first, False
        if not first:
            return dp.gaussian(values, bound, rho)[0]
        key = (tuple(values), bound, rho)
        if key not in self._kept:
            self._kept[key] = dp.gaussian(values, bound, rho)[0]
        return self._kept[key]

    @staticmethod
    def select(scores: np.ndarray, bound: float, rho: float) -> int:
        return dp.top_k(scores, 1, bound, rho)[0]


def dp_train_and_score(
    x_train: pa.Table,
    y_train: np.ndarray,
    x_eval: pa.Table,
    y_eval: np.ndarray,
    depth: int,
    rounds: int,
    threads: int,
    rho: float,
    noise: SeededNoise | OpenDPNoise | None = None,
) -> float:
    """Train with the DP trainer (the DP family's own code, as mode dp's job runs it, on one partition,
    candidates from its DP sketch as for a table with no declared ranges) and score it; return its AUC."""
    plan = DP_FAMILY.canonical(xgb.XGBClassifier(n_estimators=rounds, max_depth=depth))
    labels = Labels(y_train.astype(int), y_eval.astype(int), ["0", "1"])
    parts = one_machine(Split(x_train, y_train), Split(x_eval, y_eval), labels)
    noise = noise or SeededNoise()
    order = PrivateOrder(rho=rho)
    run = Run(
        threads,
        lambda done, latest: None,
        private=order,
        noise=noise.noise,
        select=noise.select,
        public_rows=len(y_train),  # a job's is the noisy count; in-process, the exact one decides alike
    )
    trained = DP_FAMILY.train(plan, parts, ["0", "1"], run)
    prob = DP_FAMILY.predict(trained, parts.parts[0], "eval")
    return _score(y_eval, np.asarray(prob).reshape(len(y_eval), -1)[:, -1])
