"""What a newcomer meets in the first hour, in a real IPython shell against the real server: the model a
cell sends, connections that fail without breaking the working one, one-line usage errors, cancelling,
listing jobs, describe and the catalog's types, the result panel and its figures."""

from __future__ import annotations

import re

import pytest
import xgboost as xgb
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from matplotlib.figure import Figure

from remote_magic import TrainResult, compare
from remote_magic.client.errors import AuthError, ConnectionProblem
from remote_magic.display.description import Description
from remote_magic.display.formats import metric_text
from remote_magic.display.plots import Figures
from remote_magic.display.tables import plain_type
from remote_magic.magics.usage import MagicUsageError
from tests.test_magics import run, wait_running

IMPORT = "from xgboost import XGBClassifier\n"
TRAIN = "%%remote_train -d breast_cancer -l malignant {flags}\n"


def failure(ip: InteractiveShell, cell: str) -> tuple[BaseException, str]:
    """Run a cell that must fail; return its exception and everything it printed."""
    with capture_output() as out:
        result = ip.run_cell(cell)
    assert result.error_in_exec is not None or result.error_before_exec is not None, out.stdout
    return result.error_in_exec or result.error_before_exec, out.stdout + out.stderr


# 1. The model a cell sends


def test_a_cell_sends_the_model_it_bound_not_one_left_from_an_earlier_cell(shell, server):
    first = run(shell, TRAIN.format(flags="-o first") + IMPORT + "model = XGBClassifier(n_estimators=3)")
    assert first.rounds["total"] == 3
    second = run(shell, TRAIN.format(flags="-o second") + IMPORT + "clf = XGBClassifier(n_estimators=5)")
    assert second.rounds["total"] == 5, "the cell's clf was sent, not the stale model"
    rerun = run(shell, TRAIN.format(flags="") + "model = clf")
    assert rerun.rounds["total"] == 5
    rerun = run(shell, TRAIN.format(flags="") + "model = clf")
    assert rerun.rounds["total"] == 5, "a re-run cell that binds the same object again still binds it"
    named = run(shell, TRAIN.format(flags="--model model") + "unrelated = 1")
    assert named.rounds["total"] == 5, "--model still names an existing variable explicitly"


def test_a_cell_that_binds_no_model_or_several_says_so_and_sends_nothing(shell, server):
    run(shell, IMPORT + "model = XGBClassifier(n_estimators=3)")
    jobs_before = len(server.client().jobs(limit=500))
    error, shown = failure(shell, TRAIN.format(flags="") + "threshold = 0.5")
    assert isinstance(error, MagicUsageError) and isinstance(error, UsageError)
    assert "the cell bound no model" in str(error) and "--model VAR" in str(error)
    assert shown.strip().splitlines() == [f"UsageError: {error}"], "one line"
    error, _ = failure(
        shell, TRAIN.format(flags="") + IMPORT + "a = XGBClassifier(n_estimators=2)\nb = XGBClassifier()"
    )
    assert "the cell bound several models (a, b)" in str(error)
    assert len(server.client().jobs(limit=500)) == jobs_before


def test_a_pipeline_and_its_own_step_are_one_model(shell):
    result = run(
        shell,
        TRAIN.format(flags="")
        + IMPORT
        + "from sklearn.pipeline import Pipeline\nfrom sklearn.preprocessing import StandardScaler\n"
        + "clf = XGBClassifier(n_estimators=4, max_depth=2)\n"
        + "pipe = Pipeline([('scale', StandardScaler()), ('xgb', clf)])",
    )
    assert result.rounds["total"] == 4


# 6. Connections


def test_a_failed_connect_keeps_the_working_connection(shell, server, monkeypatch):
    magic = shell.user_ns["_remote_magic"]
    working = magic.client
    monkeypatch.setenv("WRONG_TOKEN", "not-a-token")
    error, shown = failure(shell, f"%remote_connect {server.url} --token-env WRONG_TOKEN --name other")
    assert isinstance(error, AuthError)
    assert "Traceback" not in shown and len(shown.strip().splitlines()) <= 2
    for line in (f"%remote_connect 127.0.0.1:{server.port}", "%remote_connect localhost"):
        error, shown = failure(shell, line)
        assert isinstance(error, ConnectionProblem)
        assert shown.strip().splitlines() == [
            f"ConnectionProblem: the URL must start with http:// or https:// (got '{line.split()[1]}')"
        ]
    error, shown = failure(shell, "%remote_connect http://127.0.0.1:9")
    assert isinstance(error, ConnectionProblem) and len(shown.strip().splitlines()) == 1
    assert magic.current == "default" and magic.client is working and set(magic.connections) == {"default"}
    table = run(shell, "%remote_datasets")
    assert "breast_cancer" in repr(table), "later magics still work"


# 8. Usage errors fail the run with their message


def test_usage_errors_are_one_line_exceptions_that_reach_the_front_end(shell):
    for cell, message in [
        ("%%remote_train --label x\nmodel = 1", "missing --dataset"),
        ("%%remote_train -d x -l y --bogus\nmodel = 1", "unrecognized arguments: --bogus"),
        ("%remote_jobs --state nonsense", "invalid choice: 'nonsense'"),
        ("%remote_cancel", "usage: %remote_cancel JOB_ID"),
        # an empty cell: IPython's own UsageError was only printed, and papermill went on (rev11 #8)
        ("%%remote_evaluate --model local -d x -l y", "%%remote_evaluate has nothing in its cell"),
        ("%%remote_train -d x -l y\n\n", "%%remote_train has nothing in its cell"),
        ('%remote_describe --where "x >', "cannot parse the arguments"),
        (
            "%%remote_train -d x -l y --where age >= 18 AND bmi < 30 --seed 1\nmodel = 1",
            'unrecognized arguments: >= 18 AND bmi < 30; quote the filter: --where "age >= 18 AND bmi < 30"',
        ),
        (
            "%%remote_train synthetic --label label\nmodel = 1",
            "unrecognized arguments: synthetic; the dataset goes in --dataset synthetic (or -d), or in "
            'the spec\'s "dataset"',
        ),
        (
            "%%remote_train -d x -l y --model clf2\nimport xgboost\nmodel = xgboost.XGBClassifier()",
            "there is no variable 'clf2'; the cell bound model: --model model, or no --model",
        ),
    ]:
        error, shown = failure(shell, cell)
        assert isinstance(error, MagicUsageError), cell
        assert message in str(error), (cell, str(error))
        assert shown.strip() == f"UsageError: {error}", cell


# 11. Cancel and the job list


def test_cancel_waits_for_the_final_state(shell, server):
    before = {j.id for j in server.client().jobs(limit=50)}
    job = run(
        shell,
        "%%remote_train -d synthetic_rules -l label --no-wait\n"
        + IMPORT
        + "model = XGBClassifier(n_estimators=2000, max_depth=10, learning_rate=0.01)",
    )
    assert wait_running(server, before) == job.id
    table = run(shell, "%remote_jobs --state running")
    rows = [dict(zip(table.header, row)) for row in table.rows]
    assert [r["job"] for r in rows] == [job.id]
    assert rows[0]["model"] == "XGBClassifier" and rows[0]["rounds"] == "2000"
    assert re.fullmatch(r"training \d+/2000", rows[0]["progress"]), rows[0]
    with capture_output() as out:
        shell.run_line_magic("remote_cancel", job.id)
    assert out.stdout == f"Job {job.id}: cancelled\n", "the final state, not 'running'"
    shown = shell.run_line_magic("remote_job", job.id)  # raised JobCancelled (rev11 #8)
    assert shown.id == job.id and repr(shown).endswith(": cancelled>")


def test_jobs_listing_has_limit_state_and_tells_jobs_apart(shell, server):
    run(shell, TRAIN.format(flags="") + IMPORT + "model = XGBClassifier(n_estimators=2)")
    run(
        shell,
        "%%remote_train -d diabetes -l progression --eval-fraction 0.3\n"
        "from xgboost import XGBRegressor\nm = XGBRegressor(n_estimators=3)",
    )
    table = run(shell, "%remote_jobs --limit 2")
    rows = [dict(zip(table.header, row)) for row in table.rows]
    assert [(r["model"], r["rounds"], r["dataset"]) for r in rows] == [
        ("XGBRegressor", "3", "diabetes@1"),
        ("XGBClassifier", "2", "breast_cancer@1"),
    ]
    assert len(run(shell, "%remote_jobs").rows) <= 20, "a default limit, not every job ever made"
    succeeded = run(shell, "%remote_jobs --state succeeded --limit 50")
    assert succeeded.rows and {row[table.header.index("state")] for row in succeeded.rows} == {"succeeded"}
    error, _ = failure(shell, "%remote_jobs --limit 0")
    assert "--limit must be an integer from 1 to 500" in str(error)


def test_a_claimed_job_is_starting_not_queued():
    from remote_magic.contract.wire import JobStatus, Progress
    from remote_magic.display.tables import jobs_table

    claimed = JobStatus(
        id="j",
        dataset="d",
        kind="train",
        state="running",
        progress=Progress(stage="queued"),
        submitted_at="2026-01-01T00:00:00",
        version=2,
    )
    assert jobs_table([claimed]).rows[0][6] == "starting"


# 12. result.plot()


def test_plot_returns_figures_that_render_and_can_be_taken_one_by_one(shell):
    run(shell, TRAIN.format(flags="-o r") + IMPORT + "model = XGBClassifier(n_estimators=6, max_depth=2)")
    figures = run(shell, "r.plot()")
    assert isinstance(figures, Figures) and list(figures) == [
        "learning curve",
        "feature importance",
        "confusion matrix",
    ]
    assert all(isinstance(figures[name], Figure) for name in figures)
    assert figures._repr_html_().count("<img class='remote-magic-plot'") == 3, "a notebook shows them"
    plain, _ = shell.display_formatter.format(figures, include={"text/plain"})
    assert "Figure size" not in plain["text/plain"] and "learning curve" in plain["text/plain"]
    figures["learning curve"].savefig(__import__("io").BytesIO(), format="png")
    assert figures["learning curve"].axes, "rendering left the figure intact"


# 16. describe and the catalog


def test_describe_is_a_table_with_inline_histograms_and_zero_missing_by_rule(shell):
    description = run(
        shell,
        "%remote_describe -d synthetic_rules -l label -f age,bmi,region,smoker "
        "--where \"age >= 40 AND region IN ('north', 'south')\"",
    )
    assert isinstance(description, Description)
    assert description.columns["age"].missing is None, "the server suppressed the count"
    assert description.missing("age") == 0 and description.missing("region") == 0
    assert description.missing("smoker") is None, "not tested by the filter: still suppressed"
    text = repr(description)
    assert re.search(r"age\s+numeric\s+missing 0\s", text) and re.search(
        r"smoker\s+numeric\s+missing <10", text
    )
    page = description._repr_html_()
    assert (
        page.count("class='remote-magic-histogram'") == 3
        and page.count("class='remote-magic-categories'") == 1
    )
    assert re.search(r"title='&lt; [\d.]+: [\d,]+'", page), "each bar names its bin and count"
    assert ", [" not in page, "no comma-wrapped text"
    noisy = run(shell, '%remote_describe -d synthetic -l label -f age,smoker --where "age >= 40"')
    assert noisy.raw.privacy is not None and noisy.missing("age") == 0, "mode dp: known zero, not the noise"
    assert re.search(r"age\s+numeric\s+missing 0\s", repr(noisy))


def test_catalog_shows_plain_types(shell):
    table = run(shell, "%remote_datasets synthetic")
    types = {row[0]: row[1] for row in table.rows}
    assert types["age"] == "float" and types["region"] == "text" and types["visits"] == "integer"
    for arrow, plain in [
        ("large_string", "text"),
        ("timestamp[us, tz=UTC]", "timestamp"),
        ("date32[day]", "date"),
        ("dictionary<values=string, indices=int32, ordered=0>", "category"),
        ("decimal128(10, 2)", "decimal"),
        ("bool", "boolean"),
        ("uint8", "integer"),
    ]:
        assert plain_type(arrow) == plain, arrow


# 17. The result panel


def test_result_panel_layout_precision_rounds_and_the_past_best_note(server):
    client = server.client()
    spec = {"dataset": "breast_cancer", "label": "malignant", "eval": {"fraction": 0.3, "seed": 2}}
    fresh = client.train(xgb.XGBClassifier(n_estimators=12, max_depth=2), spec)
    panel = fresh._repr_html_()
    titles = [chart["title"] for chart in fresh.charts()["hconcat"]]
    assert titles == ["Learning curve", "Feature importance", "Confusion matrix (eval)"], "one row of plots"
    assert "12 rounds" in panel and "base +" not in panel and "rounds: 12\n" in repr(fresh)
    raw = fresh.raw.model_copy(deep=True)
    raw.metrics["accuracy"] = 0.481
    shown = TrainResult(raw)
    assert ">0.4810</td>" in shown._repr_html_() and "accuracy  0.4810" in repr(shown)
    policy = fresh.raw.policy
    assert policy is not None and policy.significant_digits == 4
    assert [metric_text(v, policy) for v in (0.481, 54.3, 1.0)] == ["0.4810", "54.30", "1.000"]

    overfit = client.train(
        xgb.XGBRegressor(n_estimators=150, max_depth=6, learning_rate=0.3),
        {"dataset": "diabetes", "label": "progression", "eval": {"fraction": 0.3, "seed": 7}},
    )
    note = overfit.past_best_note()
    best, _ = overfit.best_round()
    assert note and f"best at round {best}" in note and best < 100
    assert note in overfit._repr_html_() and f"note: {note}" in repr(overfit)
    assert fresh.past_best_note() is None
    labels = [t.get_text() for t in overfit.plot()["feature importance"].axes[0].texts]
    assert labels and all(re.fullmatch(r"[\d.]+[kMGT]?", label) and len(label) <= 5 for label in labels)


def test_compare_bars_take_the_colours_of_their_curves(server):
    client = server.client()
    spec = {"dataset": "diabetes", "label": "progression", "eval": {"fraction": 0.3, "seed": 4}}
    runs = {
        "shallow": client.train(xgb.XGBRegressor(n_estimators=8, max_depth=2), spec),
        "deep": client.train(xgb.XGBRegressor(n_estimators=8, max_depth=4), spec),
    }
    fig = compare(runs).plot()
    curves, bars = fig.axes
    line_colours = {line.get_label(): line.get_color() for line in curves.lines}
    for name, patch in zip(runs, bars.patches):
        assert tuple(patch.get_facecolor()[:3]) == tuple(line_colours[name][:3])
    assert len(set(map(tuple, line_colours.values()))) == 2


def test_continued_training_says_base_and_new_rounds(server):
    from sklearn.datasets import load_breast_cancer

    client = server.client()
    data = load_breast_cancer(as_frame=True).frame.head(200)
    data.columns = [re.sub(r"[^0-9a-zA-Z]+", "_", c).strip("_").lower() for c in data.columns]
    base = xgb.XGBClassifier(n_estimators=4, max_depth=2).fit(data.drop(columns="target"), 1 - data["target"])
    result = client.train(base.set_params(n_estimators=6), {"dataset": "breast_cancer", "label": "malignant"})
    assert "4 base + 6 new = 10 rounds" in result._repr_html_() and "rounds: 4 base + 6 new = 10" in repr(
        result
    )


def test_small_mistakes_from_review_7_are_named_before_anything_is_spent(server):
    """`n_estimators="20"` was accepted silently (plain XGBoost fails on it); `multi:softprob` on two
    classes was told only "needs num_class"; `--label lable` suggested the feature `age` too."""
    from remote_magic.client.errors import ModelRejected, SpecError

    client = server.client()
    spec = {"dataset": "synthetic", "label": "label"}
    jobs = len(client.jobs())
    with pytest.raises(ModelRejected) as typed:
        client.train(xgb.XGBClassifier(n_estimators="20"), spec)
    assert typed.value.code == "parameter_out_of_bounds"
    assert "n_estimators must be a whole number (int), not '20' (str)" in typed.value.message
    assert len(client.jobs()) == jobs, "refused here, before anything was sent"
    with pytest.raises(SpecError) as typo:
        client.cost(None, {**spec, "label": "lable"})
    assert "did you mean 'label'?" in typo.value.message and "'age'" not in typo.value.message
    with pytest.raises(ModelRejected, match="for a label of two classes use binary:logistic"):
        client.cost(xgb.XGBClassifier(objective="multi:softprob", n_estimators=5), spec)  # as submit
