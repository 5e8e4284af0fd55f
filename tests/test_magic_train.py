"""%%remote_train and friends in a real IPython shell against the real server."""

from __future__ import annotations

import pytest
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
        "%%remote_train --model clf\n"
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
