"""Stage the admitted rows of a dataset with a locked-down DuckDB, as Arrow.

DuckDB may read exactly one file, the dataset's, and nothing else; its configuration is locked before
the query runs. The query comes from `remote_magic.query` (the same builder the dry run uses), built from
the checked filter and derive trees, never from user text. Rows stay Arrow columns from DuckDB to the
model family: no pandas copy of the whole table here. Non-finite values become missing and rare text
levels are merged (`remote_magic.rows.prepare`, as in the dry run).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from remote_magic.codes import Refusal
from remote_magic.families.base import Split
from remote_magic.query import EVAL_FLAG, ROW_ID, staging_query
from remote_magic.rows import prepare
from remote_magic.specs import Resolved
from remote_magic.wire import DatasetSpec

from ..protocol import SplitCounts, Staging


@dataclass
class Staged:
    """The admitted rows, split into training and evaluation rows, with their row numbers in the file."""

    train: Split
    eval: Split
    train_rows: np.ndarray
    eval_rows: np.ndarray


def connect_locked(path: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that can read `path` and nothing else, with its configuration locked."""
    con = duckdb.connect(":memory:")
    con.execute("SET allowed_paths = ?", [[path]])
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")
    return con


def resolved_of(staging: Staging, spec: DatasetSpec) -> Resolved:
    return Resolved(
        features=staging.features,
        filter_columns=staging.filter_columns,
        derive_columns=staging.derive_columns,
        derived=list(spec.derive or {}),
        id_column=staging.id_column,
    )


def _parquet_source() -> exp.Expression:
    return exp.func(
        "read_parquet", exp.Placeholder(), exp.EQ(this=exp.var("file_row_number"), expression=exp.true())
    )


def stage(staging: Staging, spec: DatasetSpec, kind: str, rare_level_rows: int) -> Staged:
    """Run the staging query, prepare the admitted rows (`remote_magic.rows`) and split them into
    training and evaluation rows."""
    resolved = resolved_of(staging, spec)
    sql, params = staging_query(
        spec, resolved, _parquet_source(), exp.column("file_row_number", quoted=True), kind
    )
    path = staging.dataset_path
    try:
        con = connect_locked(path)
    except duckdb.OutOfMemoryException as exc:
        raise MemoryError("staging ran out of memory") from exc
    try:
        table = con.sql(sql, params=[*params, path]).to_arrow_table()
    except duckdb.OutOfMemoryException as exc:
        raise MemoryError("staging ran out of memory") from exc
    except duckdb.Error as exc:
        if not spec.derive:
            raise
        raise Refusal(
            "staging_failed",
            "the admitted rows could not be staged; a derived column may be undefined for some rows "
            "(for example ln of a non-positive number)",
        ) from exc
    finally:
        con.close()
    return split(prepare(table, resolved.all_features, rare_level_rows), resolved.all_features, spec.label)


def split(table: pa.Table, features: list[str], label: str) -> Staged:
    """Split staged rows by the evaluation flag the query computed."""
    is_eval = table.column(EVAL_FLAG).combine_chunks().fill_null(False)
    rows = table.column(ROW_ID).to_numpy().astype(np.uint32)
    mask = is_eval.to_numpy(zero_copy_only=False).astype(bool)
    data = table.select([*features, label])
    parts = {}
    for name, keep in (("train", pc.invert(is_eval)), ("eval", is_eval)):
        part = data.filter(keep)
        parts[name] = Split(x=part.select(features), y=part.column(label).to_numpy())
    return Staged(train=parts["train"], eval=parts["eval"], train_rows=rows[~mask], eval_rows=rows[mask])


def counts(part: Split, classes: bool) -> SplitCounts:
    """Rows of a split and, for a classifier, rows per class (named by the label's text; missing
    labels are not a class)."""
    if not classes:
        return SplitCounts(rows=len(part.y))
    y = part.y
    if y.dtype == object:
        y = np.array([v for v in y if v is not None and v == v], dtype=object)
    elif y.dtype.kind == "f":
        y = y[~np.isnan(y)]
    values, numbers = np.unique(y, return_counts=True)
    return SplitCounts(rows=len(part.y), classes={str(v): int(n) for v, n in zip(values, numbers)})
