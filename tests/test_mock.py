"""Mock data for dry runs: published per dataset, never derived from real values; and the dry run admits
mock rows with the server's own staging query in DuckDB (SQL semantics: a row is admitted only where the
condition is true)."""

from __future__ import annotations

import logging

import duckdb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from remote_magic import DatasetSpec
from remote_magic.client.dryrun import admit, dry_run
from remote_magic.client.errors import DryRunError
from remote_magic.contract.codes import Refusal
from remote_magic.contract.query import ROW_ID, declared_label
from remote_magic.contract.specs import resolve
from remote_magic.contract.wire import ColumnInfo, DatasetInfo
from tests.serverproc import running

TWINS = """
[datasets.twin_a]
path = "twin_a.parquet"
id_column = "key"
label_columns = ["y"]
exclude_columns = ["secret"]

[datasets.twin_b]
path = "twin_b.parquet"
id_column = "key"
label_columns = ["y"]
exclude_columns = ["secret"]
mock_path = "twin_b_mock.csv"
"""


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """A server with two datasets of one schema and different values; twin_b publishes a mock file."""
    base = tmp_path_factory.mktemp("mock")
    data = base / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    for name, shift in (("twin_a", 0.0), ("twin_b", 1000.0)):
        pd.DataFrame(
            {
                "key": np.arange(500),
                "x": rng.normal(shift, 1, 500),
                "n": rng.integers(500, 900, 500),
                "city": rng.choice(["Oslo", "Lima"], 500),
                "secret": rng.choice(["s1", "s2"], 500),
                "y": rng.integers(0, 2, 500),
            }
        ).to_parquet(data / f"{name}.parquet", index=False)
    pd.DataFrame({"x": [1.5, 2.5], "city": ["Town", "Village"], "y": [0, 1]}).to_csv(
        data / "twin_b_mock.csv", index=False
    )
    with running(
        data, base / "server.log", {"alice": ["twin_a", "twin_b"], "bob": ["twin_b"]}, TWINS
    ) as server:
        yield server


def _mock(server, name, user="alice", **params):
    response = server.get(f"/datasets/{name}/mock", user=user, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_synthesised_mock_uses_the_schema_only(twins):
    body = _mock(twins, "twin_a")
    assert body["source"] == "synthetic"
    assert [c["name"] for c in body["columns"]] == ["x", "n", "city", "y"], "no id, no excluded column"
    assert len(body["rows"]) == 200
    real = pd.read_parquet(twins.settings.datasets["twin_a"].path)
    xs = [r[0] for r in body["rows"]]
    assert not set(xs) & set(real["x"]) and not set(r[2] for r in body["rows"]) & set(real["city"])
    assert {r[3] for r in body["rows"]} <= {0, 1}
    assert _mock(twins, "twin_a") == body, "deterministic"


def test_mock_file_is_used_and_missing_columns_are_synthesised(twins):
    body = _mock(twins, "twin_b")
    assert body["source"] == "file" and len(body["rows"]) == 2
    names = [c["name"] for c in body["columns"]]
    rows = [dict(zip(names, r)) for r in body["rows"]]
    assert [r["city"] for r in rows] == ["Town", "Village"] and [r["x"] for r in rows] == [1.5, 2.5]
    assert all(isinstance(r["n"], int) for r in rows)


def test_mock_access_and_bounds(twins):
    assert twins.get("/datasets/twin_a/mock", user="bob").status_code == 404
    assert twins.get("/datasets/twin_a/mock", user=None).status_code == 401
    assert twins.get("/datasets/twin_a/mock", params={"rows": 5000}).status_code == 422
    assert len(_mock(twins, "twin_a", rows=7)["rows"]) == 7
    frame = twins.client().mock("twin_a")
    assert frame.attrs["roles"] == {"x": "feature", "n": "feature", "city": "feature", "y": "label"}
    assert str(frame["n"].dtype) == "int64" and str(frame["x"].dtype) == "float64"


FRAME = pd.DataFrame({"a": [1.0, None, 3.0, 4.0], "s": ["p", "q", None, "p"], "y": [0, 1, 0, 1]})
COLUMNS = [
    ColumnInfo(name="a", dtype="double", role="feature"),
    ColumnInfo(name="s", dtype="string", role="feature"),
    ColumnInfo(name="y", dtype="int64", role="label"),
    ColumnInfo(name="key", dtype="int64", role="id"),
]


def _admitted(where: str) -> list[int]:
    spec = DatasetSpec(dataset="d", label="y", where=where)
    table = admit(spec, resolve(spec, COLUMNS), FRAME, "evaluate")
    return table.column(ROW_ID).to_pylist()


@pytest.mark.parametrize(
    ("where", "admitted"),
    [
        ("a > 1", [2, 3]),
        ("NOT a > 1", [0]),
        ("a IN (1, 3)", [0, 2]),
        ("NOT a IN (1, 3)", [3]),
        ("a BETWEEN 2 AND 4", [2, 3]),
        ("a IS NULL OR s IS NULL", [1, 2]),
        ("NOT (a IS NULL) AND s = 'p'", [0, 3]),
        ("s IN ('p') OR a < 0", [0, 3]),
        ("a >= -1 AND a <> 4", [0, 2]),
    ],
)
def test_dry_run_filters_follow_sql_null_semantics(where, admitted):
    assert _admitted(where) == admitted


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("b > 1", "unknown column 'b' in filter"),
        ("a > ", "could not be parsed"),
        ("a + 1 > 2", "not allowed"),
        ("a > 1; a < 2", "single expression"),
        ("1", "must be a condition"),
    ],
)
def test_dry_run_filter_errors_are_clear(where, message):
    with pytest.raises(Refusal, match=message):
        _admitted(where)


def test_a_true_false_labels_classes_admit_its_rows_however_they_are_written():
    """`--classes True,False` named the right classes but admitted no row (the label cast to text is
    `true`/`false`), charged and empty; a number label's classes compare as numbers."""
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT i % 3 = 0 AS flag, (i % 2)::INT AS y FROM range(30) r(i)")

    def admitted(label: str, dtype: str, classes: list[str]) -> int:
        condition = declared_label(label, dtype, classes).sql(dialect="duckdb")
        return con.execute(f"SELECT count(*) FROM t WHERE {condition}").fetchone()[0]

    for written in (["True", "False"], ["TRUE", "false"], ["true", "false"]):
        assert admitted("flag", "bool", written) == 30
    assert admitted("flag", "bool", ["True"]) == 10
    assert admitted("y", "int32", ["1.0", "0"]) == 30 and admitted("y", "int32", ["1"]) == 15


OWNER = """
[datasets.customers]
path = "customers.parquet"
id_column = "cust_id"
label_columns = ["tier", "spend"]
privacy = "dp"
label_ranges = { spend = [-200, 800] }
column_ranges = { age = [18, 100], visits = [1, 12] }
column_levels = { dept = ["north", "south", "east"], tier = ["bronze", "silver", "gold"] }

[datasets.undeclared]
path = "customers.parquet"
id_column = "cust_id"
label_columns = ["tier", "spend"]
privacy = "dp"
"""


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    """A mode-dp owner table with a text label and no mock file: `customers` declares its classes,
    levels and ranges, `undeclared` (the same rows) declares nothing."""
    base = tmp_path_factory.mktemp("owner_mock")
    data = base / "data"
    data.mkdir()
    rng = np.random.default_rng(3)
    n = 600
    pd.DataFrame(
        {
            "cust_id": np.arange(n) + 1000,
            "age": rng.uniform(18, 95, n),
            "visits": rng.integers(1, 13, n),
            "dept": rng.choice(["north", "south", "east"], n),
            "tier": rng.choice(["bronze", "silver", "gold"], n),
            "spend": rng.normal(300, 100, n),
        }
    ).to_parquet(data / "customers.parquet", index=False)
    with running(data, base / "server.log", {"ana": ["customers", "undeclared"]}, OWNER) as server:
        yield server


def test_a_synthesised_mock_draws_from_the_owners_public_declarations(owner):
    """Declared classes and levels are drawn among the declared ones, numbers within the declared range
    (a regression label's too): the dry run then admits rows of the job's classes. Nothing else is read."""
    frame = owner.client("ana").mock("customers")
    assert frame.attrs["source"] == "synthetic" and len(frame) == 200
    assert set(frame["tier"]) == {"bronze", "silver", "gold"} and set(frame["dept"]) == {
        "north",
        "south",
        "east",
    }
    assert frame["age"].between(18, 100).all() and frame["spend"].between(-200, 800).all()
    assert frame["spend"].std() > 200, "uniform over the declared range, not the rows' spread"
    assert str(frame["visits"].dtype) == "int64" and set(frame["visits"]) <= set(range(1, 13))
    real = pd.read_parquet(owner.settings.datasets["customers"].path)
    assert not set(frame["age"]) & set(real["age"]) and not set(frame["spend"]) & set(real["spend"])
    bare = owner.client("ana").mock("undeclared")
    assert set(bare["tier"]) == {"tier_0", "tier_1"}, "an undeclared column keeps the type-only values"


def test_the_dry_run_of_a_text_label_with_declared_classes_and_no_mock_file_fits(owner, caplog):
    """The review's H1: the synthesised labels were `tier_0`/`tier_1`, so no mock row had a declared
    class and XGBoost failed on zero rows (its C++ check on stderr), though the real job trains."""
    c = owner.client("ana")
    spec = DatasetSpec(dataset="customers", label="tier", features=["age", "visits", "dept"])
    report = dry_run(xgb.XGBClassifier(n_estimators=3), spec, c.dataset("customers"), c.mock("customers"))
    assert report.rounds == 3 and report.admitted == 200 and report.train_rows + report.eval_rows == 200
    regression = spec.model_copy(update={"label": "spend"})
    assert dry_run(xgb.XGBRegressor(n_estimators=2), regression, c.dataset("customers"), c.mock("customers"))
    undeclared = DatasetSpec(dataset="undeclared", label="tier", classes=["bronze", "silver", "gold"])
    with caplog.at_level(logging.DEBUG), pytest.raises(DryRunError) as refused:
        dry_run(xgb.XGBClassifier(n_estimators=3), undeclared, c.dataset("undeclared"), c.mock("undeclared"))
    message = str(refused.value)
    assert message.startswith("no mock row has a declared class of 'tier' (bronze, silver, gold)")
    assert "\n" not in message and "Check failed" not in message
    assert not [r for r in caplog.records if "Check failed" in r.getMessage()], "XGBoost never ran"
    bare = undeclared.model_copy(update={"label": "spend", "classes": None})
    with pytest.raises(
        DryRunError, match=r"needs the data owner's public range of the label \(`label_ranges"
    ):
        dry_run(xgb.XGBRegressor(n_estimators=2), bare, c.dataset("undeclared"), c.mock("undeclared"))


def test_xgboosts_own_words_on_a_failed_dry_run_fit_are_said_once_not_logged(caplog):
    """The DryRunError carries XGBoost's line; its family's log record (for the server's log) printed it
    again on a notebook's stderr, where no logging handler is set (Python's last resort prints it)."""
    columns = [*COLUMNS[:1], ColumnInfo(name="y", dtype="double", role="label"), COLUMNS[3]]
    rows = pd.DataFrame({"a": np.arange(30.0), "y": -np.arange(1.0, 31.0)})
    info = DatasetInfo(name="d", rows=None, columns=columns)
    model = xgb.XGBRegressor(objective="reg:gamma", n_estimators=2)  # gamma regression of negative labels
    with caplog.at_level(logging.DEBUG), pytest.raises(DryRunError, match="Check failed"):
        dry_run(model, DatasetSpec(dataset="d", label="y"), info, rows)
    assert not [r for r in caplog.records if "Check failed" in r.getMessage()]
