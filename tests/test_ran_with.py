"""A result says what it ran with, in a real IPython shell against a real server: the spec as the server
resolved it, the features (derived ones named), the rows admitted, the rows left out for a missing label
(a noisy count drawn with the others in mode dp, exact but rounded in mode rules), and the spec variable
when `--spec VAR` named one; a variable called `spec` is never used by its name alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.serverproc import dataset_table, running
from tests.test_magics import run

MISSING = 60
CELL = (
    "\nfrom xgboost import XGBClassifier\n"
    "model = XGBClassifier(n_estimators=3, max_depth=2, min_child_weight=3)\n"
)


@pytest.fixture(scope="module")
def holes(server, tmp_path_factory):
    """The breast-cancer table with 60 labels missing, served as `holes` (mode dp) and `holes_rules`."""
    base = tmp_path_factory.mktemp("holes")
    frame = pd.read_parquet(server.settings.datasets["breast_cancer"].path)
    frame["malignant"] = frame["malignant"].astype("float64")
    frame.loc[np.arange(0, 2 * MISSING, 2), "malignant"] = np.nan
    path = base / "holes.parquet"
    frame.to_parquet(path)
    mock = base / "mock.csv"  # the owner's mock rows: a 0/1 label stored as decimals
    frame.drop(columns="id").dropna().head(50).to_csv(mock, index=False)
    classes = '{ malignant = ["0", "1"] }'  # the label's declared classes (mode dp)
    tables = dataset_table("holes", path, "malignant", mock_path=f'"{mock}"', column_levels=classes)
    tables += dataset_table("holes_rules", path, "malignant", privacy="rules")
    with running(base / "data", base / "log", {"eve": ["holes", "holes_rules"]}, tables) as served:
        yield served


@pytest.fixture()
def eve(holes, shell_as):
    return shell_as(holes, "eve")


def test_a_result_in_mode_rules_says_its_spec_features_and_the_rows_left_out(eve):
    eve.user_ns["spec"] = {"where": "mean_radius > 10", "derive": {"r2": "mean_radius * mean_radius"}}
    result = run(
        eve,
        "%%remote_train -d holes_rules -l malignant -f mean_radius,mean_texture --eval-fraction 0.4 --seed 3"
        + CELL,
    )
    lines = result.ran_with
    assert lines[0] == "spec: label malignant; filter: none; eval: 0.4 held out (seed 3)"
    assert lines[1] == "features (2): mean_radius, mean_texture", "the leftover `spec` was not used"
    assert lines[2].startswith("rows admitted: train ") and "noisy" not in lines[2]
    assert lines[3] == f"rows left out: {MISSING} with a missing label"
    assert all(line in repr(result) for line in lines) and "remote-magic-ran-with" in result._repr_html_()

    named = run(
        eve,
        "%%remote_train --spec spec -d holes_rules -l malignant -f mean_radius --eval-fraction 0.4" + CELL,
    )
    flags = "--dataset, --label, --features, --eval-fraction"
    assert named.ran_with[0] == f"spec variable: `spec` (named by --spec); flags over it: {flags}"
    assert named.ran_with[1] == "spec: label malignant; filter: mean_radius > 10; eval: 0.4 held out (seed 0)"
    assert named.ran_with[2] == "features (2): mean_radius, r2 (derived: r2)"
    assert named.ran_with[-1].startswith("rows left out: ") and named.ran_with[-1].endswith("missing label")


def test_in_mode_dp_the_rows_left_out_are_a_noisy_count_drawn_with_the_others(eve, holes):
    result = run(eve, "%%remote_train -d holes -l malignant --eval-fraction 0.4 --seed 4" + CELL)
    assert result.ran_with[-2].startswith("rows admitted: train ") and result.ran_with[-2].endswith(
        "(noisy counts)"
    )
    assert result.ran_with[-1].endswith("with a missing label (noisy counts)")
    left_out = result.raw.summary.dropped
    assert [d.reason for d in left_out] == ["missing label"]
    # sigma of the count vector at the default job price is about 20: 5 sigma either side
    assert left_out[0].rows is None or abs(left_out[0].rows - MISSING) <= 100
    price = 0.01 + 0.05  # the evaluation's and the DP trainer's (mode dp)
    assert result.privacy["rho"] == pytest.approx(price), "the count costs nothing beyond the job's price"
    again = holes.client("eve").result(result.job_id)
    assert again.summary.dropped == left_out, "drawn once, stored with the answer"


def test_the_dry_run_and_the_server_agree_on_a_0_1_label_stored_as_decimals(eve):
    flags = "-d holes -l malignant --eval-fraction 0.4 --seed 5"
    dry = run(eve, f"%%remote_train --dry-run {flags}" + CELL)
    assert "decimal numbers" not in repr(dry), "the owner's mock rows show two values: no hint"
    assert run(eve, f"%%remote_train {flags}" + CELL).task == "binary"
    synthesised = run(eve, "%%remote_train --dry-run -d holes_rules -l malignant" + CELL)
    assert "fine for a 0/1 label, but if it is continuous use XGBRegressor" in repr(synthesised)
