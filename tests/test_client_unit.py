"""The client's parsing and error mapping, fast: recorded responses of a real server replayed through a
requests transport adapter (tests/record_responses.py records them), no server and no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from requests.adapters import BaseAdapter

from remote_magic import Client
from remote_magic.client.errors import AuthError, NotFound, SpecError
from remote_magic.display.result import TrainResult

RECORDED = {
    r["name"]: r for r in json.loads((Path(__file__).parent / "recorded" / "responses.json").read_text())
}


class Replay(BaseAdapter):
    """Answers each request with the recorded response of the same method and path (or the one named)."""

    def __init__(self, answers: dict[tuple[str, str], dict]):
        super().__init__()
        self.answers = answers
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request, **kwargs):
        self.sent.append(request)
        path = request.path_url.split("?")[0].removeprefix("/v1")
        record = self.answers[(request.method, path)]
        response = requests.Response()
        response.status_code = record["status"]
        response._content = json.dumps(record["body"]).encode()
        response.headers["Content-Type"] = "application/json"
        response.request = request
        response.url = request.url
        return response

    def close(self):
        pass


def client_with(*names: str) -> tuple[Client, Replay]:
    answers = {(RECORDED[n]["method"], RECORDED[n]["path"]): RECORDED[n] for n in names}
    client = Client("http://127.0.0.1:9", "rm_test")
    adapter = Replay(answers)
    client._session.mount("http://", adapter)
    return client, adapter


def test_catalog_responses_parse_with_the_policy_in_effect():
    client, adapter = client_with("whoami", "datasets", "dataset")
    assert client.whoami().user == "alice"
    names = [d.name for d in client.datasets()]
    assert "breast_cancer" in names
    info = client.dataset("breast_cancer")
    assert info.policy is not None and info.policy.min_count >= 3 and info.bounds is not None
    assert {c.role for c in info.columns} >= {"id", "label", "feature"}
    assert adapter.sent[0].headers["Authorization"] == "Bearer rm_test"


def test_a_result_renders_from_the_policy_it_carries():
    client, _ = client_with("status", "result")
    result = client.job(RECORDED["status"]["body"]["id"]).result()
    assert isinstance(result, TrainResult)
    stricter = result.raw.model_copy(
        update={"policy": result.raw.policy.model_copy(update={"min_count": 25, "round_to": 10})}
    )
    text = repr(TrainResult(stricter))
    assert "rounded to 10; counts under 25 suppressed" in text
    assert "under 25 suppressed" in TrainResult(stricter)._repr_html_()


@pytest.mark.parametrize(
    ("name", "cls", "code"),
    [
        ("unauthorized", AuthError, "unauthorized"),
        ("unknown_dataset", SpecError, "unknown_dataset"),
        ("invalid_derive", SpecError, "invalid_derive"),
        ("not_found", NotFound, "not_found"),
    ],
)
def test_error_bodies_map_to_their_classes(name, cls, code):
    record = RECORDED[name]
    client, _ = client_with(name)
    call = {
        "unauthorized": lambda: client.whoami(),
        "unknown_dataset": lambda: client.dataset("nope"),
        "invalid_derive": lambda: client.describe(
            {"dataset": "breast_cancer", "label": "malignant", "derive": {"r": "lower(mean_radius)"}}
        ),
        "not_found": lambda: client.job("0000000000000000"),
    }[name]
    with pytest.raises(cls) as info:
        call()
    assert info.value.code == code and info.value.status == record["status"]
    assert "Traceback" not in info.value.message


def test_a_classifiers_classes_come_from_the_fitted_model_where_the_owner_declared_none():
    """The spec's `classes` are text, as the owner declares them; the client fills them from a fitted
    XGBoost classifier (its codes 0 .. k-1) only on a noisy-mode dataset whose owner declared none, and
    only for a label of numbers or of true/false, whose values those codes are; every other spec is left
    as it is (the server then asks for `classes`). A list that no value of the label's type can be, or
    that names a value twice, is refused on the schema alone."""
    from argparse import Namespace

    import numpy as np
    import xgboost as xgb
    from pydantic import ValidationError

    from remote_magic.contract.codes import Refusal
    from remote_magic.contract.specs import class_values, with_model_classes
    from remote_magic.contract.wire import ColumnInfo, DatasetInfo, DatasetSpec, PolicyInEffect
    from remote_magic.magics.args import spec_from_args

    named = DatasetSpec(dataset="d", label="y", classes=[0, 1.5, True, np.int64(2), np.bool_(False)])
    assert named.classes == ["0", "1.5", "true", "2", "false"]
    with pytest.raises(ValidationError):
        DatasetSpec(dataset="d", label="y", classes=[1])  # one class is no classifier
    assert class_values(["1.0e0", "0"], "int64") == {0.0, 1.0}
    assert class_values(["False", "true"], "bool") == {False, True}
    for classes, dtype in (
        (["0", "abc"], "int64"),
        (["0", "1.5"], "int8"),
        (["1", "1.0"], "double"),
        (["no", "yes"], "bool"),
        (["a", "a"], "string"),
    ):
        with pytest.raises(Refusal) as refused:
            class_values(classes, dtype)
        assert refused.value.code == "invalid_spec"
    rules = dict(min_count=10, round_to=1, significant_digits=3, min_rows=10, min_class_rows=10)

    def info(privacy: str, dtype: str = "int64", levels: dict | None = None) -> DatasetInfo:
        policy = PolicyInEffect(**rules, privacy=privacy)
        columns = [ColumnInfo(name="y", dtype=dtype, role="label")]
        return DatasetInfo(name="d", rows=None, columns=columns, policy=policy, column_levels=levels or {})

    x, y = np.arange(40.0).reshape(-1, 1), np.arange(40) % 3
    fitted, unfitted = xgb.XGBClassifier(n_estimators=2).fit(x, y), xgb.XGBClassifier()
    binary = xgb.XGBClassifier(n_estimators=2).fit(x, y % 2)
    spec = DatasetSpec(dataset="d", label="y")
    assert with_model_classes(fitted, spec, info("dp")).classes == ["0", "1", "2"]
    assert with_model_classes(fitted, spec, info("dp_eval_only", "double")).classes == ["0", "1", "2"]
    assert with_model_classes(binary, spec, info("dp", "bool")).classes == ["false", "true"]
    for model, dataset in (
        (fitted, info("rules")),
        (fitted, info("dp", levels={"y": ["a", "b"]})),
        (fitted, info("dp", "string")),  # the codes say nothing of a text label's values
        (fitted, info("dp", "bool")),  # three classes of a true/false label: the server says so
        (unfitted, info("dp")),
        (fitted.get_booster(), info("dp")),
        (xgb.XGBRegressor(n_estimators=2).fit(x, y), info("dp")),
    ):
        assert with_model_classes(model, spec, dataset) is spec
    given = spec.model_copy(update={"classes": ["1", "2"]})
    assert with_model_classes(fitted, given, info("dp")) is given
    flags = {
        n: None for n in ("dataset", "label", "where", "features", "eval_fraction", "eval_where", "seed")
    }
    parsed = spec_from_args(Namespace(**{**flags, "dataset": "d", "label": "y", "classes": "no, yes"}))
    assert parsed.classes == ["no", "yes"]
