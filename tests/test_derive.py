"""`derive`: new feature columns from an allowlisted expression grammar, compiled to DuckDB on the server."""

from __future__ import annotations

import duckdb
import pytest
import sqlglot
import xgboost as xgb
from sqlglot import exp

from remote_magic import DatasetSpec
from remote_magic.contract.codes import Refusal
from remote_magic.contract.grammar import check_derive
from remote_magic.contract.query import finite_or_null

FEATURES = ["age", "income", "bmi", "smoker", "visits", "noise_0"]


@pytest.mark.parametrize(
    "expr",
    [
        "bmi / (age * age)",
        "CASE WHEN age > 65 THEN 1 ELSE 0 END",
        "ln(income) + exp(-abs(noise_0))",
        "least(age, 70) - greatest(bmi, 18.5)",
        "coalesce(income, 0) * 2",
        "CASE WHEN smoker = 1 AND age BETWEEN 40 AND 60 THEN 2 WHEN bmi IS NULL THEN -1 ELSE 0 END",
    ],
)
def test_grammar_accepts_the_allowlisted_forms(expr):
    check_derive({"new": expr}, FEATURES, [*FEATURES, "label", "id"])


@pytest.mark.parametrize(
    ("expr", "word"),
    [
        ("lower(region)", "LOWER"),
        ("power(age, 2)", "POW"),
        ("my_udf(age)", "function my_udf()"),
        ("read_parquet('/etc/passwd')", "READ_PARQUET"),
        ("(SELECT max(age) FROM t)", "subquery"),
        ("CAST(age AS TEXT)", "CAST"),
        ("age; DROP TABLE t", "single expression"),
    ],
)
def test_grammar_refuses_everything_else(expr, word):
    with pytest.raises(Refusal) as info:
        check_derive({"new": expr}, FEATURES, [*FEATURES, "label", "id"])
    assert info.value.code == "invalid_derive"
    assert word.lower() in info.value.message.lower()


def test_the_label_and_the_id_are_not_usable_and_names_must_be_new():
    with pytest.raises(Refusal) as info:
        check_derive({"leak": "label * 2"}, FEATURES, [*FEATURES, "label", "id"])
    assert info.value.code == "unknown_column" and "'label'" in info.value.message
    with pytest.raises(Refusal) as info:
        check_derive({"age": "age + 1"}, FEATURES, [*FEATURES, "label", "id"])
    assert info.value.code == "invalid_derive" and "'age'" in info.value.message


def test_a_derived_feature_is_used_in_training(server):
    spec = DatasetSpec(
        dataset="synthetic_rules",
        label="label",
        features=["noise_0", "noise_1"],
        derive={
            "risk": "0.07 * age - ln(income) + 0.14 * bmi + 1.6 * smoker + 0.25 * visits",
            "older": "CASE WHEN age > 65 THEN 1 ELSE 0 END",
        },
        eval={"fraction": 0.2, "seed": 1},
    )
    result = server.client().train(xgb.XGBClassifier(n_estimators=20, max_depth=3), spec)
    importance = result.feature_importance
    assert importance.index[0] == "risk"
    assert set(importance.index) <= {"risk", "older", "noise_0", "noise_1"}
    assert result.metrics["auc"] > 0.75


def _refusal(server, derive: dict) -> dict:
    spec = {"dataset": "synthetic_rules", "label": "label", "derive": derive}
    response = server.submit_raw(b"\x80\x05N.", spec)
    assert response.status_code == 422, response.text
    return response.json()["error"]


@pytest.mark.parametrize(
    ("derive", "code"),
    [
        ({"x": "lower(region)"}, "invalid_derive"),
        ({"x": "read_csv('/etc/passwd')"}, "invalid_derive"),
        ({"x": "getenv('HOME')"}, "invalid_derive"),
        ({"x": "label + 1"}, "invalid_derive"),  # the label is known, and not for derive
        ({"age": "age * 2"}, "invalid_derive"),
        ({"bad name": "age"}, "invalid_spec"),
        # A value that is text for some rows only would fail its cast to a number on those rows: a
        # failure (or its absence) would say whether such a row is in the table.
        ({"x": "CASE WHEN age = 75 AND income = 32796.5 THEN region ELSE '1' END"}, "invalid_derive"),
        ({"x": "CASE WHEN age = 75 THEN region ELSE 1 END"}, "invalid_derive"),
        ({"x": "coalesce(region, 1)"}, "invalid_derive"),
        ({"x": "IF(age > 50, region, 1)"}, "invalid_derive"),
        ({"x": "region"}, "invalid_derive"),
    ],
)
def test_the_api_refuses_bad_derive_before_queueing(server, derive, code):
    error = _refusal(server, derive)
    assert error["code"] == code
    assert "Traceback" not in error["message"]


@pytest.mark.parametrize(
    ("text", "instead"),
    [
        ("log(income)", "use ln(x)"),
        ("log10(income)", "use ln(x)"),
        ("income ** 2", "use exp(y * ln(x))"),
        ("sqrt(income)", "use exp(0.5 * ln(x))"),
        ("max(age, income)", "use greatest("),
        ("date_part('year', age)", "use year(t)"),
        ("weekday(age)", "use dayofweek(t)"),
        ("lower(region)", ""),
    ],
)
def test_a_refused_function_points_to_its_allowed_equivalent(server, text, instead):
    """A function a derive may not use is named with what to write instead, where an equivalent exists,
    and the functions a derive has, through the server's own spec check."""
    error = _refusal(server, {"x": text})
    assert error["code"] == "invalid_derive" and "is not allowed" in error["message"]
    assert instead in error["message"]
    assert "a derive's functions are ln, exp, abs, least, greatest, coalesce" in error["message"]


def test_a_derived_value_that_does_not_read_as_a_number_is_null_not_a_failure():
    """The staging query's cast of a derived value sits inside its TRY (a cast outside it failed the
    whole query on the one row whose value was text)."""
    probe = exp.Case(
        ifs=[exp.If(this=sqlglot.parse_one("x = 2"), true=exp.Literal.string("north"))],
        default=exp.Literal.string("1"),
    )
    sql = f"SELECT {finite_or_null(probe).sql(dialect='duckdb')} FROM range(4) AS t(x)"
    assert duckdb.sql(sql).fetchall() == [(1.0,), (1.0,), (None,), (1.0,)]


def test_a_derived_column_named_in_features_is_told_it_is_always_one(server):
    """`features=["age", "yr"]` with `derive={"yr": ...}` said `unknown column 'yr' in features` (rev11
    #8); the server (and the dry run, by the same `resolve`) now says why and what to do."""
    spec = {
        "dataset": "synthetic_rules",
        "label": "label",
        "features": ["age", "yr"],
        "derive": {"yr": "age / 10"},
    }
    error = server.submit_raw(b"\x80\x05N.", spec).json()["error"]
    assert error["code"] == "invalid_spec"
    assert error["message"] == (
        "'yr' is a derived column, and derived columns are always features: leave it out of features"
    )
