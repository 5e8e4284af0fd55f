"""A filter on a text level the data owner did not declare (`grade = 'F'` where `column_levels.grade` lacks
'F') was charged, then refused `cohort_too_small`. The declared levels are public, so the server refuses it
before admission, at no cost, and the dry run (the same `specs.resolve`) and the cost preview refuse it
too. Against a real server over HTTP."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from remote_magic import dry_run
from remote_magic.client.api import as_spec
from remote_magic.client.errors import DryRunError, RemoteError
from tests.serverproc import running

LEVELS = ["A", "B", "C"]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("declared_levels")
    data = base / "data"
    data.mkdir()
    rng = np.random.default_rng(5)
    x = rng.normal(size=1000)
    frame = pd.DataFrame(
        {"id": np.arange(1000), "x": x, "grade": rng.choice(LEVELS, 1000), "label": (x > 0).astype(int)}
    )
    frame.to_parquet(data / "g.parquet", index=False)
    config = (
        f'\n[datasets.graded]\npath = "{data}/g.parquet"\nid_column = "id"\nlabel_columns = ["label"]\n'
        'column_levels.label = ["0", "1"]\ncolumn_levels.grade = ["A", "B", "C"]\nprivacy = "dp"\n'
    )
    with running(data, base / "server.log", {"ana": ["graded"]}, config) as server:
        yield server


def _spec(**filters: object) -> dict:
    return {"dataset": "graded", "label": "label", **filters}


@pytest.mark.parametrize(
    "filters",
    [
        {"where": "grade = 'F'"},
        {"where": "x > 0 AND grade IN ('A', 'F')"},
        {"eval": {"where": "grade = 'F'"}},
    ],
)
def test_a_filter_on_an_undeclared_level_is_refused_before_any_charge(graded, filters):
    c = graded.client("ana")
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2)
    for call in (lambda: c.cost(model, _spec(**filters)), lambda: c.train(model, _spec(**filters))):
        with pytest.raises(RemoteError) as refused:
            call()
        message = refused.value.message
        assert refused.value.code == "invalid_filter" and "'F' is not one of the levels" in message
        assert "`column_levels.grade`" in message and not any(f"'{level}'" in message for level in LEVELS)
    assert c.budget()["graded"].rho_spent == 0, "refused before admission: nothing charged"
    with pytest.raises(DryRunError) as local:
        dry_run(model, as_spec(_spec(**filters)), c.dataset("graded"), c.mock("graded"))
    assert local.value.code == "invalid_filter" and "'F' is not one of the levels" in str(local.value)


def test_a_filter_on_declared_levels_is_priced_as_before(graded):
    c = graded.client("ana")
    estimate = c.cost(xgb.XGBClassifier(n_estimators=3, max_depth=2), _spec(where="grade IN ('A', 'B')"))
    assert estimate.rho > 0
