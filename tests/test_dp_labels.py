"""A label's value never decides a job's path in mode dp: under the owner's declared classes every
admitted label is its class's value, whatever type or precision the owner's table holds it in (an
integer past 2**53 that the staging query admits as the class it rounds to, a DECIMAL column). Two
worlds, the table with and without an odd row, end the same way; a real server on loopback."""

from __future__ import annotations

import decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb

from remote_magic.client.errors import RemoteError
from tests.serverproc import dataset_table, running

BIG = 2**53  # the last integer a double holds exactly with its neighbour
ROWS = 3000


def _rows(labels: list) -> dict:
    rng = np.random.default_rng(7)
    return {"id": np.arange(len(labels)), "age": rng.uniform(20, 80, len(labels))}


def _int_table(odd: bool) -> pa.Table:
    """Three classes, one of them 2**53; with `odd`, one more row labelled 2**53 + 1, which the staging
    query admits as that class (as doubles they are equal)."""
    labels = [0, 1, BIG] * (ROWS // 3) + ([BIG + 1] if odd else [])
    return pa.table({**_rows(labels), "label": pa.array(labels, pa.int64())})


def _decimal_table(odd: bool) -> pa.Table:
    """A DECIMAL label of classes 0 and 1; with `odd`, one more row whose label rounds to 1 as a double."""
    labels = [decimal.Decimal(i % 2) for i in range(ROWS)]
    labels += [decimal.Decimal("1.0000000000000001")] if odd else []
    return pa.table({**_rows(labels), "label": pa.array(labels, pa.decimal128(20, 16))})


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    base = tmp_path_factory.mktemp("labels")
    data = base / "tables"
    data.mkdir()
    tables, config = {}, ""
    for world in ("in", "out"):
        tables[f"big_{world}"] = (_int_table(world == "in"), f'["0", "1", "{BIG}"]')
        tables[f"dec_{world}"] = (_decimal_table(world == "in"), '["0", "1"]')
    for name, (table, classes) in tables.items():
        path: Path = data / f"{name}.parquet"
        pq.write_table(table, path)
        config += dataset_table(name, path, "label", **{"column_levels.label": classes})
    with running(base / "data", base / "server.log", {"alice": list(tables)}, config) as server:
        yield server


def _outcome(server, dataset: str) -> tuple[str, list[str] | None]:
    spec = {"dataset": dataset, "label": "label", "eval": {"fraction": 0.3, "seed": 3}}
    try:
        result = server.client().submit(xgb.XGBClassifier(n_estimators=2, max_depth=2), spec).result(600)
    except RemoteError as exc:
        return exc.code, None
    return "succeeded", [count.label for count in result.raw.summary.eval.classes]


@pytest.mark.parametrize("table", ["big", "dec"])
def test_a_label_that_rounds_to_a_declared_class_trains_as_that_class_in_both_worlds(owner, table):
    with_row, without = _outcome(owner, f"{table}_in"), _outcome(owner, f"{table}_out")
    assert with_row == without
    assert with_row[0] == "succeeded" and len(with_row[1]) == (3 if table == "big" else 2)
