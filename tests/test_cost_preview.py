"""The cost preview (`Client.cost`, `--dry-run`) says, before anything is spent, what a job will cost: for a
train job in mode dp the DP trainer's part and the evaluation's apart, their total and the budget left,
the expected intervals, and the noise the trainer will add per leaf for the model priced, worked out by
the trainer's own `Settings.scales`. An evaluation job, a dataset in mode dp_eval_only and one in mode
rules price no training. Against a real server over HTTP."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from remote_magic.client.dryrun import DryRun, dry_run
from remote_magic.client.errors import DryRunError, RemoteError, SpecError
from remote_magic.client.trainer_noise import expected_training
from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import CostEstimate, DPTraining
from remote_magic.families import family
from remote_magic.families.dpboost import Settings, epsilon
from remote_magic.families.dpboost.family import settings_for
from remote_magic.families.dpboost.settings import DEFAULT_ROUNDS, LARGE_ROUNDS
from tests.accountant import accountant_total
from tests.serverproc import running

DELTA = 1e-6


def test_the_noise_per_leaf_is_what_the_trainers_own_scales_give():
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3, learning_rate=0.3)
    training, why = expected_training(model, 0.05, DELTA)
    settings = Settings(rounds=20, max_depth=3, learning_rate=0.3)
    scales = settings.scales(0.05)
    assert why == "" and training == DPTraining(
        rho=0.05,
        epsilon=round(epsilon(0.05, DELTA), 4),
        trees=20,
        sigma_gradient=scales.sigma_g,
        sigma_hessian=scales.sigma_h,
    )
    spent = accountant_total(settings, scales)
    assert spent == pytest.approx(0.05), "the noise shown spends exactly the training cost"
    more_trees, _ = expected_training(xgb.XGBClassifier(n_estimators=80, max_depth=3), 0.05, DELTA)
    assert more_trees.sigma_gradient == pytest.approx(2 * training.sigma_gradient), "rho per tree / 4"


def test_rounds_left_unset_show_the_most_the_count_may_choose_and_say_so():
    training, why = expected_training(xgb.XGBClassifier(max_depth=3), 0.05, DELTA)
    most = Settings(rounds=LARGE_ROUNDS, max_depth=3).scales(0.05)
    assert training is not None and training.trees == LARGE_ROUNDS
    assert training.sigma_gradient == pytest.approx(most.sigma_g)
    assert why.startswith("n_estimators is unset") and f"{DEFAULT_ROUNDS} rounds" in why


def test_a_continued_model_pays_no_intercept_and_gets_less_noise():
    rows = np.random.default_rng(0).normal(size=(200, 2))
    fitted = xgb.XGBClassifier(n_estimators=2, max_depth=2).fit(rows, rows[:, 0] > 0)
    fresh, _ = expected_training(xgb.XGBClassifier(n_estimators=2, max_depth=2), 0.05, DELTA)
    continued, _ = expected_training(fitted, 0.05, DELTA)
    assert continued.sigma_gradient < fresh.sigma_gradient
    assert continued.sigma_gradient == Settings(rounds=2, max_depth=2).scales(0.05, continuing=True).sigma_g


def test_a_model_the_trainer_refuses_or_cannot_price_says_why():
    with pytest.raises(Refusal, match="refuses subsample") as refused:
        expected_training(xgb.XGBClassifier(subsample=0.5), 0.05, DELTA)
    assert refused.value.code == "parameter_out_of_bounds"
    regression, why = expected_training(xgb.XGBRegressor(), 0.05, DELTA)
    assert regression is None and "label" in why and why.startswith("the noise per leaf is not shown here")
    unknown, why = expected_training(object(), 0.05, DELTA)
    assert unknown is None and "not shown here" in why


def test_the_dry_run_shows_training_and_evaluation_apart():
    training = DPTraining(rho=0.05, epsilon=3.77, trees=20, sigma_gradient=22.6, sigma_hessian=11.3)
    cost = CostEstimate(
        dataset="d",
        kind="train",
        privacy="dp",
        rho=0.06,
        epsilon=4.15,
        delta=DELTA,
        rho_eval=0.01,
        rho_train=0.05,
        epsilon_train=3.77,
        training=training,
        rho_cap=1.0,
        rho_remaining_after=0.94,
        assumed_eval_rows=400,
        expected={"rows": 39.2, "auc": 0.03},
    )
    report = DryRun("train", "d", "synthetic", "label", ["x"], 10, 10, 8, 2, 2, cost=cost)
    shown = repr(report)
    assert (
        "cost if submitted: rho 0.06 (epsilon 4.15 at delta 1e-06): training rho 0.05 (epsilon 3.77) "
        in shown
    )
    assert "and evaluation rho 0.01; budget left after it: rho 0.94 of 1" in shown
    assert (
        "DP training: 20 trees; Gaussian noise on each leaf's sums: sd 22.6 on the gradients, 11.3" in shown
    )
    assert "expected 95% intervals for about 400 evaluation rows: rows +/- 39.2, auc +/- 0.03" in shown
    untrained = cost.model_copy(
        update={"rho": 0.01, "rho_train": 0.0, "epsilon_train": 0.0, "training": None}
    )
    plain = repr(dataclasses.replace(report, cost=untrained))
    assert "training" not in plain.split("cost if submitted")[1] and "evaluation rho" not in plain


@pytest.fixture(scope="module")
def priced(tmp_path_factory):
    """A server with one table served in mode dp (the DP trainer), in mode dp_eval_only and in mode rules,
    its numeric column as a regression label with the owner's range and a three-class label, in mode dp."""
    base = tmp_path_factory.mktemp("cost_preview")
    data = base / "data"
    data.mkdir()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 2))
    frame = pd.DataFrame(
        {
            "id": np.arange(2000),
            "x1": x[:, 0],
            "x2": x[:, 1],
            "label": (x[:, 0] > 0).astype(int),
            "target": 2 * x[:, 0] + rng.normal(0, 0.5, 2000),
            "tier": np.digitize(x[:, 1], [-0.5, 0.5]),
        }
    )
    frame.to_parquet(data / "t.parquet", index=False)
    config = ""
    for name, mode in (("trainer", "dp"), ("eval_only", "dp_eval_only"), ("rounded", "rules")):
        config += (
            f'\n[datasets.{name}]\npath = "{data}/t.parquet"\nid_column = "id"\n'
            f'label_columns = ["label"]\ncolumn_levels.label = ["0", "1"]\nprivacy = "{mode}"\n'
        )
    config += (
        f'\n[datasets.regress]\npath = "{data}/t.parquet"\nid_column = "id"\nlabel_columns = ["target"]\n'
        'exclude_columns = ["label", "tier"]\nlabel_ranges.target = [-6, 6]\nprivacy = "dp"\n'
        f'\n[datasets.tiers]\npath = "{data}/t.parquet"\nid_column = "id"\nlabel_columns = ["tier"]\n'
        'exclude_columns = ["label", "target"]\ncolumn_levels.tier = ["0", "1", "2"]\nprivacy = "dp"\n'
    )
    users = {"ana": ["trainer", "eval_only", "rounded", "regress", "tiers"]}
    with running(data, base / "server.log", users, config) as server:
        yield server


def spec(dataset: str) -> dict:
    return {"dataset": dataset, "label": "label", "eval": {"fraction": 0.25, "seed": 1}}


def test_evaluation_only_dp_and_rules_price_no_training(priced):
    c = priced.client("ana")
    model = xgb.XGBClassifier(n_estimators=10, max_depth=3, min_child_weight=3)
    estimate = c.cost(model, spec("eval_only"))
    assert estimate.rho == estimate.rho_eval == pytest.approx(0.01)
    assert estimate.rho_train == 0 and estimate.epsilon_train == 0 and estimate.training is None
    # A quarter of the catalog's noisy row count (sd about 32 on the 2,000 rows).
    assert set(estimate.expected) >= {"rows", "log_loss", "auc"} and 440 <= estimate.assumed_eval_rows <= 560
    result = c.train(model, spec("eval_only"), timeout=300)
    assert result.privacy["rho"] == pytest.approx(estimate.rho), "the preview is what the job was charged"
    rounded = c.cost(model, spec("rounded"))
    assert rounded.privacy == "rules" and rounded.rho == rounded.rho_train == 0 and rounded.training is None


def test_a_train_job_in_mode_dp_prices_the_dp_trainer_beside_the_evaluation(priced):
    c = priced.client("ana")
    policy = c.dataset("trainer").policy
    model = xgb.XGBClassifier(n_estimators=10, max_depth=3)
    estimate = c.cost(model, spec("trainer"))
    assert estimate.rho_train == pytest.approx(policy.rho_train) and estimate.rho_eval == pytest.approx(0.01)
    assert estimate.rho == pytest.approx(estimate.rho_train + estimate.rho_eval)
    assert estimate.epsilon_train == pytest.approx(epsilon(policy.rho_train, estimate.delta), abs=1e-4)
    spent = estimate.rho_spent
    assert estimate.rho_remaining_after == pytest.approx(estimate.rho_cap - spent - estimate.rho)
    scales = Settings(rounds=10, max_depth=3).scales(policy.rho_train)
    assert estimate.training.trees == 10 and estimate.training.sigma_gradient == pytest.approx(scales.sigma_g)
    assert c.cost(None, spec("trainer"), kind="evaluate").rho_train == 0, "an evaluation trains nothing"
    with pytest.raises(RemoteError, match="evaluation needs a fitted model"):  # as the server refuses it
        c.cost(model, spec("trainer"), kind="evaluate")
    unpriced = c.cost(None, spec("trainer"))
    assert unpriced.training is None and any("pass the model" in note for note in unpriced.notes)
    result = c.train(model, spec("trainer"), timeout=300)
    assert result.privacy["rho"] == pytest.approx(estimate.rho)
    # A feature without a declared range pays a DP sketch from the training budget first (a tenth of it):
    # the trainer's noise is then up to 1/sqrt(0.9) of what the preview shows.
    done = result.raw.training
    assert done.trees == 10 and estimate.training.sigma_gradient <= done.sigma_gradient <= 1.06 * (
        estimate.training.sigma_gradient
    )


def test_a_dp_regression_is_priced_with_the_owners_label_range(priced):
    """The review's M2: the catalog did not carry `label_ranges`, so a regression's preview showed no
    training noise ("needs the data owner's public range") and a binary classifier's intervals."""
    c = priced.client("ana")
    info = c.dataset("regress")
    assert info.label_ranges == {"target": (-6.0, 6.0)}
    model = xgb.XGBRegressor(n_estimators=10, max_depth=3)
    regression = {"dataset": "regress", "label": "target", "eval": {"fraction": 0.25, "seed": 1}}
    estimate = c.cost(model, regression)
    scales = settings_for(family("dpboost").canonical(model), None, (-6.0, 6.0)).scales(info.policy.rho_train)
    assert estimate.training is not None and estimate.training.trees == 10
    assert estimate.training.sigma_gradient == pytest.approx(scales.sigma_g)
    # 500 evaluation rows in a range of 12 (labels' sd 2): r2's spread would not stand clear of its noise
    assert set(estimate.expected) == {"rows", "rmse", "mae"}
    assert any(note.startswith("r2 would not be released") for note in estimate.notes)
    assert not any("balanced classes" in note for note in estimate.notes)
    wide = c.cost(model, {**regression, "eval": {"fraction": 0.9}})  # 1,800 rows: it would
    assert (
        set(wide.expected) == {"rows", "rmse", "mae", "r2"}
        and wide.expected["mae"] < estimate.expected["mae"]
    )
    result = c.train(model, regression, timeout=300)
    assert result.privacy["rho"] == pytest.approx(estimate.rho)
    released, value = result.raw.intervals, result.raw.metrics
    # mae's interval is the noise's own (its low end may be cut at 0); rmse's at most the preview's
    assert released["mae"][1] - value["mae"] == pytest.approx(estimate.expected["mae"], rel=0.3)
    assert (
        max(released["rmse"][1] - value["rmse"], value["rmse"] - released["rmse"][0])
        <= estimate.expected["rmse"]
    )
    assert result.raw.training.sigma_gradient >= estimate.training.sigma_gradient


def test_a_label_of_three_declared_classes_is_priced_as_a_multiclass_training(priced):
    """Its trainer grows a tree per class each round and its evaluation releases no AUC: the preview
    showed a binary model's trees and an AUC for "two balanced classes"."""
    c = priced.client("ana")
    estimate = c.cost(xgb.XGBClassifier(n_estimators=10, max_depth=3), {"dataset": "tiers", "label": "tier"})
    scales = Settings(rounds=10, max_depth=3, objective="multi:softprob", num_class=3).scales(
        estimate.rho_train
    )
    assert estimate.training.trees == 30 and estimate.training.sigma_gradient == pytest.approx(scales.sigma_g)
    assert set(estimate.expected) == {"rows", "log_loss", "accuracy"}
    assert any(note.endswith("and 3 classes") for note in estimate.notes)


def test_the_dry_run_magic_shows_the_training_cost_and_the_noise_per_leaf(shell):
    """The demo's table is in mode dp: a train cell's dry run prices the DP trainer for the cell's model."""
    cell = "from xgboost import XGBClassifier\nmodel = XGBClassifier(n_estimators=20, max_depth=3)\n"
    outcome = shell.run_cell("%%remote_train --dry-run -d synthetic -l label --eval-fraction 0.2\n" + cell)
    outcome.raise_error()
    report = outcome.result
    assert report.cost.rho_train == pytest.approx(0.05) and report.cost.training.trees == 20
    shown = repr(report)
    assert (
        "training rho 0.05" in shown and "DP training: 20 trees; Gaussian noise on each leaf's sums" in shown
    )


def test_a_deep_or_long_model_is_warned_about_from_public_numbers_and_still_runs(priced):
    """The review's 1: `n_estimators=2000, max_depth=12` on the demo was called fine, with no word that its
    leaves hold ~10 rows against noise of sd 192, nor that it would run for an hour. The warnings use the
    catalog's released row count, the depth, the rounds and the noise only; the job still runs."""
    c = priced.client("ana")
    assert c.cost(xgb.XGBClassifier(n_estimators=10, max_depth=3), spec("trainer")).warnings == []
    deep = xgb.XGBClassifier(n_estimators=2, max_depth=12)
    estimate = c.cost(deep, spec("trainer"))
    assert len(estimate.warnings) == 1 and estimate.warnings[0].startswith("max_depth=12 leaves about 0 ")
    assert "most leaves would be noise. Lower max_depth (to about" in estimate.warnings[0]
    long = c.cost(xgb.XGBClassifier(n_estimators=400, max_depth=10), spec("trainer")).warnings
    assert any("409,600 leaves" in w and "128 times the default job's 3,200" in w for w in long)
    assert any("rough guide" in w for w in long)
    result = c.train(deep, spec("trainer"), timeout=300)
    assert result.raw.training.trees == 2 and result.privacy["rho"] == pytest.approx(estimate.rho)


def test_the_dry_run_says_its_warnings_instead_of_calling_the_model_fine(shell):
    cell = "from xgboost import XGBClassifier\nmodel = XGBClassifier(n_estimators=2000, max_depth=12)\n"
    outcome = shell.run_cell("%%remote_train --dry-run -d synthetic -l label --eval-fraction 0.2\n" + cell)
    outcome.raise_error()
    shown = repr(outcome.result)
    assert "spec and model pass every check, but see the warnings" in shown and "are fine" not in shown
    assert "warning: max_depth=12 leaves about 10 training rows per leaf" in shown
    assert "Lower max_depth (to about 7)" in shown and "times the default job's" in shown


def test_the_dry_run_takes_a_spec_dict_as_the_client_does(priced):
    """`remote_magic.dry_run(model, {...}, ...)` failed `'dict' object has no attribute 'classes'`
    (rev11 #3); `Client.train` and `Client.cost` take the same dict."""
    c = priced.client("ana")
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2)
    report = dry_run(model, spec("trainer"), c.dataset("trainer"), c.mock("trainer"))
    assert report.label == "label" and report.dataset == "trainer"
    with pytest.raises(SpecError, match="wher"):
        dry_run(model, {**spec("trainer"), "wher": "x1 > 0"}, c.dataset("trainer"), c.mock("trainer"))


def test_cost_refuses_what_the_dry_run_and_the_server_refuse_before_any_row(priced):
    """`Client.cost` priced an XGBRegressor on a label of two declared classes and a StandardScaler
    Pipeline in mode dp, which submit and the dry run refuse at once (rev11 #4); it runs their checks."""
    c = priced.client("ana")
    info, mock = c.dataset("trainer"), c.mock("trainer")
    scaled = make_pipeline(StandardScaler(), xgb.XGBClassifier(n_estimators=3))
    for model in (xgb.XGBRegressor(n_estimators=3), scaled):
        with pytest.raises(RemoteError) as refused:
            c.cost(model, spec("trainer"))
        with pytest.raises(DryRunError) as dry:
            dry_run(model, spec("trainer"), info, mock)
        assert (refused.value.code, refused.value.message) == (dry.value.code, str(dry.value))
        with pytest.raises(RemoteError) as submitted:
            c.submit(model, spec("trainer")).result(timeout=300)
        assert submitted.value.code == refused.value.code
    assert c.cost(scaled, spec("rounded")).rho == 0, "mode rules trains a Pipeline"
