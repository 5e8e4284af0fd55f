"""The dry run and the server give the same verdict on the same model and spec, because they run the same
checks (`remote_magic.specs`, `grammar`, `payload`, the model family): a corpus of good and bad specs and
models, each run through `dry_run` on the mock rows and submitted to the real server."""

from __future__ import annotations

import pytest
import xgboost as xgb
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from remote_magic import DatasetSpec
from remote_magic.client.dryrun import dry_run
from remote_magic.client.errors import DryRunError, JobFailed, RemoteError

BASE = {"dataset": "synthetic_rules", "label": "label"}


def small() -> xgb.XGBClassifier:
    return xgb.XGBClassifier(n_estimators=3, max_depth=2)


def notebook_function():
    """A function defined in a notebook (module __main__): cloudpickle ships its code by value."""
    namespace = {"__name__": "__main__"}
    exec("def my_objective(y_true, y_pred):\n    return y_pred, y_pred", namespace)  # noqa: S102
    return namespace["my_objective"]


CORPUS = [
    ("fine", small(), {}, "train", "ok"),
    (
        "fine with filter and derive",
        small(),
        {"where": "age >= 30", "derive": {"r": "bmi / age"}},
        "train",
        "ok",
    ),
    (
        "a pipeline",
        Pipeline([("s", StandardScaler()), ("m", small())]),
        {"features": ["age", "bmi"]},
        "train",
        "ok",
    ),
    ("a params dict", {"params": {"objective": "binary:logistic"}, "num_boost_round": 2}, {}, "train", "ok"),
    ("misspelt feature", small(), {"features": ["agee"]}, "train", "unknown_column"),
    ("label that is not one", small(), {"label": "age"}, "train", "invalid_spec"),
    ("the id as a feature", small(), {"features": ["id"]}, "train", "invalid_spec"),
    ("filter on an unknown column", small(), {"where": "agee > 3"}, "train", "unknown_column"),
    ("a function in a filter", small(), {"where": "lower(region) = 'north'"}, "train", "invalid_filter"),
    ("lower() in a derive", small(), {"derive": {"r": "lower(region)"}}, "train", "invalid_derive"),
    ("the label in a derive", small(), {"derive": {"r": "label * 2"}}, "train", "invalid_derive"),
    ("a derive named like a column", small(), {"derive": {"age": "bmi"}}, "train", "invalid_derive"),
    (
        "unknown column in eval filter",
        small(),
        {"eval": {"where": "regon IS NULL"}},
        "train",
        "unknown_column",
    ),
    ("unknown dataset", small(), {"dataset": "nope"}, "train", "unknown_dataset"),
    ("a number compared with text", small(), {"where": "age = 'thirty'"}, "train", "invalid_filter"),
    ("text compared with a number", small(), {"where": "region = 5"}, "train", "invalid_filter"),
    ("text in double quotes", small(), {"where": 'region = "north"'}, "train", "unknown_column"),
    ("the label in a filter", small(), {"where": "label = 1"}, "train", "invalid_filter"),
    ("arithmetic on text", small(), {"derive": {"r": "region * 2"}}, "train", "invalid_derive"),
    ("a filter that does not parse", small(), {"where": "age >= AND bmi > 3"}, "train", "invalid_filter"),
    (
        "notebook code",
        xgb.XGBClassifier(n_estimators=2, objective=notebook_function()),
        {},
        "train",
        "custom_code_refused",
    ),
    ("not an allowed class", LogisticRegression(), {}, "train", "invalid_model"),
    ("too many rounds", xgb.XGBClassifier(n_estimators=5000), {}, "train", "parameter_out_of_bounds"),
    ("too deep", xgb.XGBClassifier(n_estimators=2, max_depth=50), {}, "train", "parameter_out_of_bounds"),
    (
        "early stopping in a training",
        xgb.XGBClassifier(n_estimators=3, early_stopping_rounds=2),
        {},
        "train",
        "parameter_out_of_bounds",
    ),
    (
        "classes on a regressor",
        xgb.XGBRegressor(n_estimators=3),
        {"classes": ["0", "1"]},
        "train",
        "invalid_spec",
    ),
    ("evaluate an unfitted model", small(), {}, "evaluate", "unsupported_model"),
    (
        "evaluate a pipeline",
        Pipeline([("s", StandardScaler()), ("m", small())]).fit([[0.0], [1.0]], [0, 1]),
        {},
        "evaluate",
        "unsupported_model",
    ),
]


def dry_verdict(client, model, spec: DatasetSpec, kind: str) -> str:
    try:
        dry_run(model, spec, client.dataset(spec.dataset), client.mock(spec.dataset), kind)
    except DryRunError as error:
        assert error.code is not None, f"the dry run refused without a server code: {error}"
        return error.code
    except RemoteError as error:  # the catalog refused before the dry run could start
        return error.code
    return "ok"


def server_verdict(client, model, spec: DatasetSpec, kind: str) -> tuple[str, bool]:
    """The server's verdict, and whether a job was created for it."""
    try:
        job = client.submit(model, spec, kind)
    except RemoteError as error:
        assert not isinstance(error, JobFailed), "a refusal before any job exists is never JobFailed"
        return error.code, False
    job.wait(timeout=120)
    return (job.status.error.code if job.status.error else "ok"), True


@pytest.mark.parametrize(("name", "model", "change", "kind", "expected"), CORPUS, ids=[c[0] for c in CORPUS])
def test_dry_run_and_server_agree(server, name, model, change, kind, expected):
    client = server.client()
    spec = DatasetSpec.model_validate({**BASE, **change})
    dry = dry_verdict(client, model, spec, kind)
    real, created = server_verdict(client, model, spec, kind)
    assert (dry, real) == (expected, expected), name
    assert created == (expected == "ok"), "a refusal that needs no data comes before any job exists"


def test_lower_in_a_derive_is_refused_by_both_before_any_job_exists(server):
    client = server.client()
    spec = DatasetSpec.model_validate({**BASE, "derive": {"r": "lower(region)"}})
    before = {j.id for j in client.jobs()}
    code, created = server_verdict(client, small(), spec, "train")
    assert (code, created) == ("invalid_derive", False)
    assert {j.id for j in client.jobs()} == before
    assert dry_verdict(client, small(), spec, "train") == "invalid_derive"
