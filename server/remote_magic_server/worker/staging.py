"""Stage the admitted rows of a dataset with a locked-down DuckDB.

DuckDB may read exactly one file, the dataset's, and nothing else; its configuration is locked before
the query runs. The query is built from the checked filter trees (grammar.py), never from user text, and
the train/eval split is a hash of the id column and the seed, so it is the same on every run. Each
admitted row also carries its row number in the file, which the differencing guard remembers.
Derived columns (`derive` in the spec) are checked against the derive grammar again here and selected
as extra, aliased expressions; they become features. `where` filters on dataset columns only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
from sqlglot import exp

from ..grammar import check_derive, parse_derive, parse_filter

SPLIT_BUCKETS = 1_000_000
EVAL_FLAG = "__remote_magic_is_eval"
ROW_ID = "__remote_magic_row_id"


@dataclass
class Staged:
    train: pd.DataFrame
    eval: pd.DataFrame
    features: list[str]
    label: str
    train_rows: np.ndarray | None = None
    eval_rows: np.ndarray | None = None


def connect_locked(path: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that can read `path` and nothing else, with its configuration locked."""
    con = duckdb.connect(":memory:")
    con.execute("SET allowed_paths = ?", [[path]])
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")
    return con


def build_query(
    spec: dict,
    features: list[str],
    filter_columns: list[str],
    id_column: str,
    default_eval: dict | None,
    derive_columns: Sequence[str] = (),
) -> tuple[str, list]:
    """The staging SELECT as SQL with `?` placeholders, and its parameters (split seed, threshold, path)."""
    cols: list[exp.Expression] = [exp.column(c, quoted=True) for c in [*features, spec["label"]]]
    derive = spec.get("derive") or {}
    check_derive(derive, derive_columns, [*filter_columns, id_column])
    cols += [
        exp.alias_(exp.paren(parse_derive(name, text, derive_columns)), name, quoted=True)
        for name, text in derive.items()
    ]
    where = parse_filter(spec["where"], filter_columns) if spec.get("where") else None
    split = spec.get("eval") or default_eval
    params: list = []
    if split is None:
        flag: exp.Expression = exp.true()
    elif "where" in split:
        flag = exp.func("coalesce", exp.paren(parse_filter(split["where"], filter_columns)), exp.false())
    else:
        bucket = exp.Mod(
            this=exp.func("hash", exp.column(id_column, quoted=True), exp.Placeholder()),
            expression=exp.Literal.number(SPLIT_BUCKETS),
        )
        flag = exp.LT(this=exp.paren(bucket), expression=exp.Placeholder())
        params += [int(split.get("seed", 0)), int(round(float(split["fraction"]) * SPLIT_BUCKETS))]
    row_id = exp.alias_(exp.column("file_row_number", quoted=True), ROW_ID, quoted=True)
    select = exp.select(*cols, exp.alias_(flag, EVAL_FLAG, quoted=True), row_id).from_(
        exp.func(
            "read_parquet", exp.Placeholder(), exp.EQ(this=exp.var("file_row_number"), expression=exp.true())
        )
    )
    if where is not None:
        select = select.where(where)
    select = select.order_by(exp.column(id_column, quoted=True))
    return select.sql(dialect="duckdb", identify=True), params


def _categorize(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    for col in features:
        if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col].dtype):
            frame[col] = frame[col].astype("category")
    return frame


def stage(
    path: str,
    spec: dict,
    features: list[str],
    filter_columns: list[str],
    id_column: str,
    default_eval: dict | None,
    derive_columns: Sequence[str] = (),
) -> Staged:
    """Run the staging query and split the admitted rows into train and eval frames."""
    sql, params = build_query(spec, features, filter_columns, id_column, default_eval, derive_columns)
    try:
        con = connect_locked(path)
    except duckdb.OutOfMemoryException as exc:
        raise MemoryError("staging ran out of memory") from exc
    try:
        frame = con.execute(sql, [*params, path]).df()
    except duckdb.OutOfMemoryException as exc:
        raise MemoryError("staging ran out of memory") from exc
    except duckdb.Error as exc:
        if not spec.get("derive"):
            raise
        from .training import TrainingError

        raise TrainingError(
            "staging_failed",
            "the admitted rows could not be staged; a derived column may be undefined for some rows "
            "(for example ln of a non-positive number)",
        ) from exc
    finally:
        con.close()
    features = [*features, *(spec.get("derive") or {})]
    frame = _categorize(frame, features)
    is_eval = frame.pop(EVAL_FLAG).astype(bool).to_numpy()
    rows = frame.pop(ROW_ID).to_numpy(dtype=np.uint32)
    return Staged(
        train=frame[~is_eval].reset_index(drop=True),
        eval=frame[is_eval].reset_index(drop=True),
        features=features,
        label=spec["label"],
        train_rows=rows[~is_eval],
        eval_rows=rows[is_eval],
    )
