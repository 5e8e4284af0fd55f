"""Mock data for dry runs: published per dataset, never derived from real values; and the dry run admits
mock rows with the server's own staging query in DuckDB (SQL semantics: a row is admitted only where the
condition is true)."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from remote_magic import DatasetSpec
from remote_magic.client.dryrun import admit
from remote_magic.contract.codes import Refusal
from remote_magic.contract.query import ROW_ID, declared_label
from remote_magic.contract.specs import resolve
from remote_magic.contract.wire import ColumnInfo
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
