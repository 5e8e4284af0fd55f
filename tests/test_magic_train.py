"""%%remote_train and friends in a real IPython shell against the real server."""

from __future__ import annotations

import pytest
import xgboost as xgb
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from remote_magic import TrainResult
from remote_magic.client.errors import RemoteError, SpecError


@pytest.fixture()
def ip(server, monkeypatch):
    monkeypatch.setenv("REMOTE_MAGIC_TOKEN", server.tokens["alice"])
    monkeypatch.setenv("REMOTE_MAGIC_PROGRESS", "off")
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "remote_magic")
    shell.run_line_magic("remote_connect", server.url)
    yield shell
    shell.run_line_magic("unload_ext", "remote_magic")
    InteractiveShell.clear_instance()


def run(ip, source: str):
    """Run a cell like the kernel does; return its result or raise what the cell raised."""
    result = ip.run_cell(source)
    if result.error_before_exec:
        raise result.error_before_exec
    if result.error_in_exec:
        raise result.error_in_exec
    return result.result


def test_train_cell_runs_locally_then_remotely(ip):
    result = run(
        ip,
        "%%remote_train --dataset breast_cancer_rules --label malignant --eval-fraction 0.25 --seed 5 -o r\n"
        "import xgboost as xgb\n"
        "local_marker = 42\n"
        "model = xgb.XGBClassifier(n_estimators=20, max_depth=3)\n",
    )
    assert isinstance(result, TrainResult)
    assert ip.user_ns["local_marker"] == 42
    assert ip.user_ns["r"] is result
    assert result.metrics["auc"] > 0.9
    assert "TrainResult" in repr(result) and "<table" in result._repr_html_()


def test_spec_variable_stands_in_for_flags(ip):
    result = run(
        ip,
        "%%remote_train --model clf --spec spec\n"
        "import xgboost as xgb\n"
        "spec = {'dataset': 'diabetes_rules', 'label': 'progression', 'eval': {'fraction': 0.3, 'seed': 1}}\n"
        "clf = {'params': {'objective': 'reg:squarederror', 'max_depth': 2}, 'num_boost_round': 10}\n",
    )
    assert result.task == "regression" and result.rounds["total"] == 10


def test_remote_failure_raises_a_real_exception(ip):
    with pytest.raises(SpecError) as info:
        run(
            ip,
            "%%remote_train --dataset breast_cancer_rules --label malignant --where 'mean_radus > 3'\n"
            "import xgboost as xgb\nmodel = xgb.XGBClassifier(n_estimators=2)\n",
        )
    assert info.value.code == "unknown_column"
    lines = info.value._render_traceback_()
    assert len(lines) <= 2 and "mean_radius" in lines[0] and "Traceback" not in "".join(lines)
    assert isinstance(info.value, RemoteError)


def test_bad_local_arguments_are_usage_errors(ip):
    with pytest.raises(UsageError, match="--dataset"):
        run(ip, "%%remote_train --label malignant\nmodel = 1\n")
    with pytest.raises(UsageError, match="no variable 'nothing'"):
        run(ip, "%%remote_train --dataset breast_cancer_rules --label malignant --model nothing\nx = 1\n")
    with pytest.raises(UsageError, match="not both"):
        run(
            ip,
            "%%remote_train -d breast_cancer_rules -l malignant --eval-fraction 0.2 "
            "--eval-where 'x > 1'\nm=1\n",
        )


def test_evaluate_cell_and_job_magics(ip):
    run(
        ip,
        "import xgboost as xgb, pandas as pd\n"
        "from sklearn.datasets import load_breast_cancer\n"
        "public = load_breast_cancer(as_frame=True).frame.head(150)\n"
        "public.columns = [c.replace(' ', '_') for c in public.columns]\n"
        "fitted = xgb.XGBClassifier(n_estimators=8, max_depth=2).fit(public.drop(columns='target'), "
        "1 - public['target'])\n",
    )
    result = run(ip, "%%remote_evaluate -d breast_cancer_rules -l malignant --model fitted\nfitted\n")
    assert result.kind == "evaluate" and result.rounds["new"] == 0
    jobs = run(ip, "%remote_jobs")
    assert result.job_id in repr(jobs)
    again = run(ip, f"%remote_job {result.job_id}")
    assert again.metrics == result.metrics


def test_config_lists_traits(ip, capsys):
    magic = ip.user_ns["_remote_magic"]
    assert {"url", "token_env", "timeout", "progress", "progress_delay"} <= set(
        magic.class_trait_names(config=True)
    )
    run(ip, "%config RemoteMagic.timeout = 120")
    assert magic.timeout == 120


def test_a_leftover_spec_variable_is_not_used_unless_named(ip):
    ip.user_ns["spec"] = {"where": "mean_radius > 15", "derive": {"r2": "mean_radius * mean_radius"}}
    flags = "-d breast_cancer_rules -l malignant --eval-fraction 0.3 --seed 2"
    cell = "\nimport xgboost as xgb\nmodel = xgb.XGBClassifier(n_estimators=3)\n"
    plain = run(ip, f"%%remote_train --dry-run {flags}" + cell)
    assert "r2" not in plain.features, "a variable called spec is not picked up by its name"
    assert plain.admitted == plain.mock_rows
    named = run(ip, f"%%remote_train --dry-run --spec spec {flags}" + cell)
    assert "r2" in named.features
    with pytest.raises(UsageError, match="there is no variable 'nope'"):
        run(ip, f"%%remote_train --spec nope {flags}" + cell)


def test_an_error_in_the_cell_is_the_cells_own_short_traceback(ip):
    result = ip.run_cell(
        "%%remote_train -d breast_cancer_rules -l malignant\nx = 1\nmodel = undefined_name\n"
    )
    error = result.error_in_exec
    assert isinstance(error, NameError)
    shown = error._render_traceback_()
    assert shown[0] == "Traceback (most recent call last):" and shown[-1].startswith("NameError: name")
    assert 'File "<cell>", line 2' in "\n".join(shown) and len(shown) <= 5, shown
    assert not any("remote_magic" in line or "IPython" in line for line in shown)


def test_a_model_no_family_knows_is_named(ip):
    cell = "\nfrom sklearn.ensemble import RandomForestClassifier\nmodel = RandomForestClassifier()\n"
    with pytest.raises(
        UsageError, match=r"model is a RandomForestClassifier \(sklearn\), which no model family"
    ):
        run(ip, "%%remote_train -d breast_cancer_rules -l malignant" + cell)


CURVE_CELL = "\nfrom xgboost import XGBClassifier\nmodel = XGBClassifier(n_estimators=3, max_depth=2)"


def test_curve_0_asks_no_curve_and_costs_nothing_for_one(ip, server):
    """`--curve 0` is the default: no curve, and not a cent of the curve's budget; `--curve 2` pays the
    curve's share and gets its two points."""
    policy = server.settings.policy_for("synthetic")
    line = "%%remote_train -d synthetic -l label --eval-fraction 0.2 -o r --seed "
    none = run(ip, line + "11 --curve 0" + CURVE_CELL)
    two = run(ip, line + "12 --curve 2" + CURVE_CELL)
    assert none.raw.history is None
    assert none.privacy["rho"] == pytest.approx(policy.dp_rho_job + policy.dp_rho_train)
    assert two.raw.history is not None and len(two.raw.history.eval) == 2
    assert two.privacy["rho"] == pytest.approx(policy.dp_rho_job + policy.dp_rho_train + policy.dp_rho_curve)


def test_a_curve_an_evaluation_cannot_draw_is_refused_before_anything_is_spent(ip, server):
    """An evaluation adds no rounds, so a curve of it has no points: asked for, it is refused by name
    (the magic, the cost preview, the API), not charged for nothing."""
    client = server.client()
    spent = client.budget()["synthetic"].rho_spent
    mock = client.mock("synthetic")
    x = mock.drop(columns=["label"]).astype({"region": "category"})
    ip.user_ns["fitted"] = xgb.XGBClassifier(n_estimators=2, enable_categorical=True).fit(x, mock["label"])
    with pytest.raises(UsageError, match=r"^--curve follows the rounds a training adds"):
        run(ip, "%remote_evaluate -d synthetic -l label --curve 2 -m fitted")
    spec = {"dataset": "synthetic", "label": "label"}
    with pytest.raises(RemoteError, match="curve follows the rounds a training adds") as refused:
        client.cost(None, spec, "evaluate", {"curve": 2})
    assert refused.value.code == "invalid_request"
    with pytest.raises(RemoteError, match="curve follows the rounds a training adds"):
        client.evaluate(ip.user_ns["fitted"], spec, release={"curve": 2})
    assert client.budget()["synthetic"].rho_spent == spent
