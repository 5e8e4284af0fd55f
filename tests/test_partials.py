"""Per-partition sums that merge: rows split over partitions score as they would all at once."""

from __future__ import annotations

import numpy as np
import pytest

from remote_magic.families import partials, scoring

RNG = np.random.default_rng(7)


def cases():
    n = 3000
    y_bin = RNG.integers(0, 2, n)
    yield "binary", y_bin, np.clip(0.5 * y_bin + RNG.normal(0.25, 0.2, n), 0, 1), 2, None
    y_multi = RNG.integers(0, 3, n)
    prob = RNG.dirichlet(np.ones(3), n)
    prob[np.arange(n), y_multi] += 0.3
    yield "multiclass", y_multi, prob / prob.sum(axis=1, keepdims=True), 3, None
    y_reg = RNG.normal(10, 3, n)
    yield "regression", y_reg, y_reg + RNG.normal(0, 1, n), 0, (0.0, 20.0)


@pytest.mark.parametrize(("task", "y", "pred", "k", "label_range"), list(cases()), ids=lambda c: str(c)[:10])
def test_partitions_merge_to_the_scores_of_all_rows(task, y, pred, k, label_range):
    whole = scoring.score(task, y, pred, k)
    stats = scoring.stats(task, y, pred, k, label_range)
    cuts = [0, 700, 701, 2000, len(y)]  # one partition of a single row, uneven sizes
    parts = [partials.partial(task, y[a:b], pred[a:b], k, label_range) for a, b in zip(cuts, cuts[1:])]
    merged_score, merged_stats = partials.finish(partials.merge(parts), task, k)
    for name, value in whole["metrics"].items():
        tolerance = 2e-4 if name == "auc" else 1e-9  # the AUC ranks by bins of probability
        assert merged_score["metrics"][name] == pytest.approx(value, abs=tolerance), name
    assert merged_score.get("confusion") == whole.get("confusion")
    assert set(merged_stats) == set(stats)
    for name, value in stats.items():
        if isinstance(value, list):
            assert merged_stats[name] == value, name
        else:
            assert merged_stats[name] == pytest.approx(value, abs=2e-4 if name == "auc" else 1e-9), name


@pytest.mark.parametrize(("task", "y", "pred", "k", "label_range"), list(cases()), ids=lambda c: str(c)[:10])
def test_isolated_rows_merge_from_histograms(task, y, pred, k, label_range):
    halves = [slice(0, 1000), slice(1000, None)]
    spread = None
    if task == "regression":
        spread = partials.spread(partials.merge([partials.moments(pred[h]) for h in halves]))
    histogram = sum((partials.isolation(task, pred[h], k, spread) for h in halves), start=partials.Counter())
    assert partials.isolated(histogram) == scoring.isolated_rows(task, pred, len(y), k)


@pytest.mark.parametrize(("task", "y", "pred", "k", "label_range"), list(cases()), ids=lambda c: str(c)[:10])
def test_stats_given_the_scores_of_the_same_rows_are_the_stats_computed_afresh(task, y, pred, k, label_range):
    """A job's report takes the AUC and confusion counts from `score` instead of computing them twice."""
    scored = scoring.score(task, y, pred, k)
    assert scoring.stats(task, y, pred, k, label_range, scored=scored) == scoring.stats(
        task, y, pred, k, label_range
    )


def sklearn_cases():
    """The cases above, XGBoost's float32 probabilities, a class never predicted, certain predictions."""
    for task, y, pred, k, _ in cases():
        if task != "regression":
            yield task, y, pred, k
            yield task, y, pred.astype(np.float32), k
    y = RNG.integers(0, 3, 500)
    prob = np.tile(np.array([0.6, 0.4, 0.0], dtype=np.float32), (500, 1))  # class 2 is never predicted
    yield "multiclass", y, prob, 3
    y_bin = RNG.integers(0, 2, 500)
    yield "binary", y_bin, np.where(RNG.random(500) < 0.5, 1.0, 0.0).astype(np.float32), 2


@pytest.mark.parametrize(("task", "y", "pred", "k"), list(sklearn_cases()), ids=lambda c: str(c)[:10])
def test_a_classifiers_scores_are_scikit_learns(task, y, pred, k):
    """`score` computes a classifier's metrics itself (scikit-learn's checks cost a small job ~4 ms):
    they are scikit-learn's, to the last digits."""
    from sklearn import metrics as skm

    got = scoring.score(task, y, pred, k)
    prob = pred.reshape(len(y), k) if task == "multiclass" else np.column_stack([1 - pred, pred])
    predicted = prob.argmax(axis=1)
    if task == "binary":
        want = {
            "auc": skm.roc_auc_score(y, pred),
            "log_loss": skm.log_loss(y, np.clip(pred, 1e-15, 1 - 1e-15), labels=[0, 1]),
            "accuracy": skm.accuracy_score(y, predicted),
            "f1": skm.f1_score(y, predicted, zero_division=0),
        }
    else:
        want = {
            "log_loss": skm.log_loss(y, prob, labels=list(range(k))),
            "accuracy": skm.accuracy_score(y, predicted),
            "f1_macro": skm.f1_score(y, predicted, average="macro", zero_division=0),
        }
    assert got["metrics"] == pytest.approx(want, rel=1e-12)
    assert got["confusion"] == skm.confusion_matrix(y, predicted, labels=list(range(k))).tolist()
    with pytest.raises(ValueError):
        scoring.score(task, y[:0], pred[:0], k)
