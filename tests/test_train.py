"""Training and evaluation against the real server over loopback, checked against local references."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn import metrics as skm

from remote_magic import DatasetSpec
from remote_magic.contract.wire import is_dp


def released(x: float) -> float:
    """The precision the server releases metrics at (4 significant digits)."""
    if x == 0:
        return 0.0
    return round(x, 3 - int(math.floor(math.log10(abs(x)))))


def close_to_released(remote: float, local: float) -> bool:
    """Equal to the released precision: within half a unit in the 4th significant digit."""
    unit = 10 ** (math.floor(math.log10(abs(local))) - 3) if local else 1e-4
    return abs(remote - local) <= 0.5 * unit + 1e-12


def test_classifier_on_synthetic_reaches_auc(server):
    result = server.client().train(
        xgb.XGBClassifier(n_estimators=40, max_depth=4, learning_rate=0.2),
        {"dataset": "synthetic_rules", "label": "label", "eval": {"fraction": 0.2, "seed": 7}},
    )
    assert result.task == "binary"
    assert result.metrics["auc"] > 0.8
    assert set(result.metrics) == {"auc", "log_loss", "accuracy", "f1"}
    assert len(result.history) == 40
    assert result.history["eval"].iloc[-1] < result.history["eval"].iloc[0]
    assert result.summary["train"]["rows"] % 5 == 0 and result.summary["eval"]["rows"] % 5 == 0
    assert "noise_0" in result.feature_importance.index or len(result.feature_importance) > 3
    assert result.feature_importance.index[0] in {"age", "smoker", "region", "income", "bmi"}
    cm = result.confusion_matrix
    assert cm is not None and cm.shape == (2, 2)


def test_regressor_on_diabetes_reaches_r2(server):
    result = server.client().train(
        xgb.XGBRegressor(n_estimators=60, max_depth=2, learning_rate=0.1),
        {"dataset": "diabetes_rules", "label": "progression", "eval": {"fraction": 0.3, "seed": 1}},
    )
    assert result.task == "regression"
    assert result.metrics["r2"] > 0.3
    assert set(result.metrics) == {"rmse", "mae", "r2"}
    assert result.confusion_matrix is None


def test_continue_training_reports_total_rounds(server):
    data = pd.read_parquet(server.settings.datasets["breast_cancer_rules"].path)
    features = [c for c in data.columns if c not in ("id", "malignant")]
    model = xgb.XGBClassifier(n_estimators=10, max_depth=2).fit(
        data[features].head(200), data["malignant"].head(200)
    )
    model.set_params(n_estimators=20)
    result = server.client().train(
        model, {"dataset": "breast_cancer_rules", "label": "malignant", "eval": {"fraction": 0.25, "seed": 3}}
    )
    assert result.rounds == {"base": 10, "new": 20, "total": 30}
    assert len(result.history) == 20
    assert list(result.history.index) == list(range(11, 31))


def test_split_is_stable_for_a_seed_and_moves_with_it(server):
    client = server.client()

    def run(seed: int):
        return client.train(
            xgb.XGBClassifier(n_estimators=5, max_depth=2),
            {"dataset": "breast_cancer_rules", "label": "malignant", "eval": {"fraction": 0.3, "seed": seed}},
        )

    a, b, c = run(11), run(11), run(12)
    assert a.metrics == b.metrics and a.summary == b.summary
    assert a.metrics != c.metrics


def _local_rows(server, where_train, where_eval):
    data = pd.read_parquet(server.settings.datasets["breast_cancer_rules"].path).sort_values("id")
    features = [c for c in data.columns if c not in ("id", "malignant")]
    admitted = data[where_train(data)]
    is_eval = where_eval(admitted)
    return admitted[~is_eval], admitted[is_eval], features


def test_train_metrics_match_a_local_reference(server):
    spec = DatasetSpec(
        dataset="breast_cancer_rules",
        label="malignant",
        where="mean_radius < 20",
        eval={"where": "mean_texture >= 20"},
    )
    params = {"n_estimators": 15, "max_depth": 3, "learning_rate": 0.3, "random_state": 0}
    remote = server.client().train(xgb.XGBClassifier(**params), spec)

    train, evalset, features = _local_rows(
        server, lambda d: d["mean_radius"] < 20, lambda d: d["mean_texture"] >= 20
    )
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "learning_rate": 0.3, "seed": 0, "nthread": 2},
        xgb.DMatrix(train[features], label=train["malignant"]),
        num_boost_round=15,
    )
    prob = booster.predict(xgb.DMatrix(evalset[features]))
    y = evalset["malignant"].to_numpy()
    local = {
        "auc": skm.roc_auc_score(y, prob),
        "log_loss": skm.log_loss(y, prob),
        "accuracy": skm.accuracy_score(y, prob >= 0.5),
        "f1": skm.f1_score(y, prob >= 0.5),
    }
    for name, value in local.items():
        assert close_to_released(remote.metrics[name], value), (name, remote.metrics[name], value)
    # The total is the sum of the released (rounded) class counts.
    cells = evalset["malignant"].value_counts()
    assert remote.summary["eval"]["rows"] == sum(5 * math.floor(n / 5 + 0.5) for n in cells)


def test_evaluate_only_matches_a_local_reference(server):
    data = pd.read_parquet(server.settings.datasets["synthetic_rules"].path).sort_values("id")
    features = ["age", "income", "bmi", "smoker", "visits"]
    public = data[data["id"] % 10 == 0]
    model = xgb.XGBClassifier(n_estimators=25, max_depth=3).fit(public[features], public["label"])
    spec = DatasetSpec(
        dataset="synthetic_rules", label="label", features=features, where="age >= 40 AND smoker = 1"
    )
    client = server.client()
    job = client.submit(model, spec, kind="evaluate")
    remote = job.result()
    assert remote.kind == "evaluate"
    assert remote.rounds == {"base": 25, "new": 0, "total": 25}
    assert remote.summary["train"] is None
    assert remote.history.empty

    rows = data[(data["age"] >= 40) & (data["smoker"] == 1)]
    prob = model.predict_proba(rows[features])[:, 1]
    y = rows["label"].to_numpy()
    assert close_to_released(remote.metrics["auc"], skm.roc_auc_score(y, prob))
    assert close_to_released(remote.metrics["log_loss"], skm.log_loss(y, np.clip(prob, 1e-15, 1 - 1e-15)))
    assert close_to_released(remote.metrics["accuracy"], skm.accuracy_score(y, prob >= 0.5))
    cells = rows["label"].value_counts()
    assert remote.summary["eval"]["rows"] == sum(5 * math.floor(n / 5 + 0.5) for n in cells)


def test_a_model_fitted_with_an_eval_set_is_evaluated_and_continued_as_it_predicts(server):
    """Its history (`evals_result_`, an OrderedDict) was refused as a disallowed global; an early-stopped
    model was scored on all its trees, where its own `predict` stops at `best_iteration`."""
    data = pd.read_parquet(server.settings.datasets["synthetic_rules"].path).sort_values("id")
    features = ["age", "income", "bmi", "smoker", "visits"]
    public = data[data["id"] % 10 == 0]
    fit, check = public.iloc[: len(public) // 2], public.iloc[len(public) // 2 :]
    stopped = xgb.XGBClassifier(n_estimators=300, max_depth=3, learning_rate=0.3, early_stopping_rounds=5)
    stopped.fit(fit[features], fit["label"], eval_set=[(check[features], check["label"])], verbose=False)
    assert stopped.best_iteration + 1 < stopped.get_booster().num_boosted_rounds()
    spec = DatasetSpec(dataset="synthetic_rules", label="label", features=features, where="age >= 40")
    client = server.client()
    remote = client.submit(stopped, spec, kind="evaluate").result()
    assert remote.rounds["base"] == stopped.best_iteration + 1
    rows = data[data["age"] >= 40]
    assert close_to_released(
        remote.metrics["auc"], skm.roc_auc_score(rows["label"], stopped.predict_proba(rows[features])[:, 1])
    )
    watched = xgb.XGBClassifier(n_estimators=10, max_depth=2)
    watched.fit(fit[features], fit["label"], eval_set=[(check[features], check["label"])], verbose=False)
    watched.set_params(n_estimators=5)
    spec = DatasetSpec(dataset="synthetic_rules", label="label", features=features, eval={"fraction": 0.2})
    assert client.train(watched, spec).rounds == {"base": 10, "new": 5, "total": 15}


def test_booster_with_params_dict(server):
    model = {"params": {"objective": "reg:squarederror", "max_depth": 2, "eta": 0.1}, "num_boost_round": 30}
    result = server.client().train(
        model, {"dataset": "diabetes_rules", "label": "progression", "eval": {"fraction": 0.3, "seed": 2}}
    )
    assert result.task == "regression"
    assert result.rounds["total"] == 30
    assert result.history.columns.name == "rmse"


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_whoami_and_datasets_show_only_granted(server, user):
    client = server.client(user)
    who = client.whoami()
    names = [d.name for d in client.datasets()]
    assert who.user == user and sorted(names) == sorted(who.datasets)
    for d in client.datasets():
        # mode rules rounds the catalog's count to 5; modes dp and dp_eval_only show a noisy count
        assert d.rows is None or is_dp(d.policy.privacy) or d.rows % 5 == 0
        roles = {c.name: c.role for c in d.columns}
        assert roles["id"] == "id"
    if user == "bob":
        assert sorted(names) == ["breast_cancer", "breast_cancer_rules"]


def test_job_list_and_status_belong_to_the_user(server):
    client = server.client()
    job = client.submit(
        xgb.XGBClassifier(n_estimators=3), {"dataset": "breast_cancer_rules", "label": "malignant"}
    )
    job.wait(timeout=600)
    assert job.status.state == "succeeded"
    assert job.status.isolation and "network" in job.status.isolation
    assert job.id in [j.id for j in client.jobs()]
    assert job.id not in [j.id for j in server.client("bob").jobs()]
    assert (server.data_dir / "jobs" / job.id / "model.json").exists()
