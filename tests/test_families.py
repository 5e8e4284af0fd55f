"""The XGBoost model family on its own: canonical forms, bounds, training, scoring, leaf facts, export.

No server: the family takes Arrow feature columns and NumPy labels, as the worker and the dry run give it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import xgboost as xgb
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import ModelBounds
from remote_magic.families import family_for
from remote_magic.families.aggregates import Asked, evaluate, measure, partners
from remote_magic.families.base import Run, Split, encode_labels
from remote_magic.families.partitions import one_machine
from remote_magic.families.xgboost import bounds as xgboost_bounds
from remote_magic.families.xgboost.family import FAMILY
from tests.onemachine import leaf_facts, train_here

BOUNDS = ModelBounds(max_n_estimators=100, max_depth=8, max_bin=256, max_threads=2)
RNG = np.random.default_rng(0)


def rows(n: int) -> tuple[Split, np.ndarray]:
    x = RNG.normal(size=(n, 3))
    y = (x[:, 0] + 0.3 * RNG.normal(size=n) > 0).astype(np.int64)
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "c": pa.array(np.where(x[:, 2] > 0, "hi", "lo"))})
    return Split(x=table, y=y), y


def test_every_form_of_a_model_has_one_canonical_plan():
    fitted = xgb.XGBClassifier(n_estimators=4, max_depth=2).fit(RNG.normal(size=(50, 2)), np.arange(50) % 2)
    cases = {
        "unfitted classifier": (xgb.XGBClassifier(n_estimators=7, max_depth=3), 7, "classification", 0),
        "fitted classifier": (fitted, 4, "classification", 4),
        "regressor": (xgb.XGBRegressor(n_estimators=5), 5, "regression", 0),
        "booster": (fitted.get_booster(), 10, "binary", 4),
        "params dict": (
            {"params": {"objective": "multi:softprob", "num_class": 3}, "num_boost_round": 2},
            2,
            "multiclass",
            0,
        ),
    }
    for name, (model, rounds, task, base_rounds) in cases.items():
        assert family_for(model) is FAMILY, name
        plan = FAMILY.canonical(model)
        assert (plan.rounds, plan.task, plan.base_rounds) == (rounds, task, base_rounds), name
        assert (plan.base is None) == (base_rounds == 0), name


def test_a_pipeline_keeps_only_its_preprocessors_parameters():
    pipeline = Pipeline(
        [("scale", StandardScaler(with_mean=False)), ("m", xgb.XGBClassifier(n_estimators=3))]
    )
    plan = FAMILY.canonical(pipeline)
    assert plan.preprocess["class"] == "Pipeline"
    step = plan.preprocess["params"]["steps"][0]
    assert step[0] == "scale" and step[1] == {
        "class": "StandardScaler",
        "params": {"copy": True, "with_mean": False, "with_std": True},
    }


@pytest.mark.parametrize(
    ("model", "word"),
    [
        (xgb.XGBClassifier(n_estimators=101), "n_estimators = 101"),
        (xgb.XGBClassifier(max_depth=9), "max_depth = 9"),
        (xgb.XGBClassifier(n_jobs=8), "n_jobs = 8"),
        (xgb.XGBClassifier(device="cuda"), "device = 'cuda'"),
        (
            Pipeline([("e", OneHotEncoder()), ("m", xgb.XGBClassifier())])
            .set_params(e__sparse_output=False)
            .set_params(memory="/tmp/cache"),
            "memory",
        ),
    ],
)
def test_bounds_are_refused_naming_the_parameter(model, word):
    with pytest.raises(Refusal) as info:
        FAMILY.check_bounds(FAMILY.canonical(model), BOUNDS)
    assert info.value.code == "parameter_out_of_bounds" and word in info.value.message


def test_a_leaf_floor_left_unset_takes_the_servers_value_and_an_explicit_low_one_is_refused():
    floored = BOUNDS.model_copy(update={"min_leaf_rows": 10})
    unset = FAMILY.canonical(xgb.XGBClassifier(n_estimators=3))
    assert xgboost_bounds.server_values(unset, floored) == {"min_child_weight": 3}
    FAMILY.check_bounds(unset, floored)
    assert unset.params["min_child_weight"] == 3, "the worker trains with the server's value"
    regression = FAMILY.canonical(xgb.XGBRegressor(n_estimators=3))
    assert xgboost_bounds.server_values(regression, floored) == {"min_child_weight": 10}
    assert xgboost_bounds.server_values(unset, BOUNDS) == {}, "no floor, nothing chosen"
    with pytest.raises(Refusal, match="min_child_weight = 1 is below 2.5"):
        FAMILY.check_bounds(FAMILY.canonical(xgb.XGBClassifier(min_child_weight=1)), floored)


def test_unknown_models_are_refused_with_what_is_allowed():
    with pytest.raises(Refusal) as info:
        family_for(object())
    assert info.value.code == "unsupported_model" and "XGBClassifier" in info.value.message


def test_training_continues_reports_progress_and_scores():
    train, y_train = rows(400)
    evaluation, y_eval = rows(200)
    labels = encode_labels(y_train, y_eval, "y", "classification")
    plan = FAMILY.canonical(xgb.XGBClassifier(n_estimators=6, max_depth=2, min_child_weight=5))
    seen: list[int] = []
    trained, parts = train_here(
        FAMILY, plan, train, evaluation, labels, lambda done, latest: seen.append(done)
    )
    assert FAMILY.rounds(trained) == {"base": 0, "new": 6, "total": 6}
    assert FAMILY.task(trained) == "binary" and seen and 1 <= seen[-1] <= 6
    scores = evaluate(FAMILY, trained, parts, len(labels.classes))
    assert scores["metrics"]["auc"] > 0.8 and np.array(scores["confusion"]).sum() == 200
    history = FAMILY.history(trained)
    assert len(history["train"]) == len(history["eval"]) == 6
    assert set(FAMILY.importance(trained)) <= {"a", "b", "c"}
    facts = leaf_facts(FAMILY, trained, parts)
    assert facts["min_leaf_rows"] >= 1 and facts["categorical"] is True and facts["n_estimators"] == 6


def test_scoring_a_fitted_model_matches_its_own_predictions(tmp_path):
    train, y_train = rows(300)
    fitted, _ = train_here(
        FAMILY,
        FAMILY.canonical(xgb.XGBRegressor(n_estimators=5)),
        train,
        train,
        encode_labels(y_train, y_train, "y", "regression"),
    )
    FAMILY.export(fitted, tmp_path)
    booster = xgb.Booster()
    booster.load_model(str(tmp_path / "model.json"))
    plan = FAMILY.canonical(booster)
    evaluation, y_eval = rows(100)
    parts = one_machine(evaluation, evaluation, encode_labels(y_eval, y_eval, "y", plan.task))
    scored = FAMILY.score(plan, parts, [], Run(1, lambda *_: None))
    assert FAMILY.rounds(scored) == {"base": 5, "new": 0, "total": 5}
    assert set(evaluate(FAMILY, scored, parts, 0)["metrics"]) == {"rmse", "mae", "r2"}


def test_labels_are_sorted_classes_named_by_their_text_and_missing_ones_refused():
    labels = encode_labels(
        np.array(["b", "a", "b"], dtype=object), np.array(["a"], dtype=object), "y", "binary"
    )
    assert labels.classes == ["a", "b"] and labels.train.tolist() == [1, 0, 1]
    with pytest.raises(Refusal, match="missing values"):
        encode_labels(np.array([1.0, np.nan]), np.array([0.0]), "y", "classification")
    with pytest.raises(Refusal, match="not numeric"):
        encode_labels(np.array(["x"], dtype=object), np.array(["y"], dtype=object), "y", "regression")


def test_a_logitraw_classifier_is_scored_on_its_probabilities_not_its_margins():
    """`binary:logitraw` trains the trees `binary:logistic` does and predicts their margins: its
    confusion, accuracy and log loss must be the logistic model's, not those of margins read as
    probabilities."""
    train, y_train = rows(400)
    evaluation, y_eval = rows(200)
    labels = encode_labels(y_train, y_eval, "y", "classification")
    scores = {}
    # Each starts at margin 0 (base_score is a probability for one, a margin for the other).
    for objective, base_score in (("binary:logistic", 0.5), ("binary:logitraw", 0.0)):
        model = xgb.XGBClassifier(
            n_estimators=6, max_depth=2, min_child_weight=5, objective=objective, base_score=base_score
        )
        trained, parts = train_here(FAMILY, FAMILY.canonical(model), train, evaluation, labels)
        scores[objective] = evaluate(FAMILY, trained, parts, len(labels.classes))
    logistic, logitraw = scores["binary:logistic"], scores["binary:logitraw"]
    assert logitraw["confusion"] == logistic["confusion"]
    for metric in ("auc", "accuracy", "log_loss"):
        assert logitraw["metrics"][metric] == pytest.approx(logistic["metrics"][metric], rel=1e-6), metric


def test_an_importance_score_moves_by_at_most_three_clipped_losses_when_one_row_goes():
    """The release's noise assumes one evaluation row moves each permutation-importance score by at most
    three clipped losses (its own term, the base's, and the row that took its value). A shuffle drawn
    for the number of rows moved every row's partner: a confident model's score moved many times that."""
    train, y_train = rows(2000)
    evaluation, y_eval = rows(1500)
    labels = encode_labels(y_train, y_eval, "y", "classification")
    model = xgb.XGBClassifier(n_estimators=30, max_depth=4, min_child_weight=5)
    trained, _ = train_here(FAMILY, FAMILY.canonical(model), train, evaluation, labels)

    def importance(keep: np.ndarray) -> dict[str, float]:
        split = Split(x=evaluation.x.table().take(pa.array(keep)), y=y_eval[keep])
        kept = encode_labels(y_train, y_eval[keep], "y", "classification")
        parts = one_machine(train, split, kept)
        asked = Asked(task="binary", n_classes=2, base_rounds=0, total_rounds=30, train=False, exact=True)
        asked.importance = True
        return measure(FAMILY, trained, parts, asked).importance

    everyone = importance(np.arange(1500))
    bound = (
        3
        * Asked(task="binary", n_classes=2, base_rounds=0, total_rounds=0, train=False, exact=True).loss_clip
    )
    assert max(everyone.values()) > bound  # the scores are large enough for a reshuffle to show
    for gone in (0, 377, 1499):
        without = importance(np.delete(np.arange(1500), gone))
        for name, score in everyone.items():
            assert abs(score - without[name]) <= bound + 1e-9, (gone, name)


def test_one_rows_missing_value_moves_no_other_rows_permutation_partner():
    """The partners were hashed as pandas read the rows: one missing value turned an integer column into
    floats (a boolean one into objects), so every row's hash and partner moved with that row, where the
    release assumes three loss terms move."""
    rng = np.random.default_rng(5)
    n = 2000
    columns = {"count": pa.array(rng.integers(0, 50, n)), "flag": pa.array(rng.random(n) < 0.5)}
    y = rng.integers(0, 2, n)
    whole = partners(pa.table(columns), y)
    for name in columns:
        values = columns[name].to_pylist()
        values[77] = None  # the row that comes in with a missing value, as the one before it
        changed = partners(pa.table({**columns, name: pa.array(values, columns[name].type)}), y)
        moved = np.flatnonzero(changed != whole)
        assert len(moved) <= 3, (name, len(moved))  # row 77, the row before it and the one before the old
