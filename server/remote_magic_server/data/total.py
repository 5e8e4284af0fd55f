"""Staging that no row's value can fail, for the noisy modes (dp, dp_eval_only).

There a snapshot that failed because of one row (a CSV value that does not parse as its declared type,
a Parquet file written as double because one row held 2.5, a missing or repeated id) told analysts for
free, through the catalog and `/metrics`, whether that row was in. So each value is converted on its
own: one that does not convert becomes NULL; a CSV line where no well-formed record starts, or a
record with the wrong number of fields, is skipped alone (`csvtotal`); a row with a missing id, and
every row of an id that repeats, is dropped (adding one row then removes at most one other, never
fails). What was changed is counted in `Repairs`, for the owner's log and CLI only. Failures that no
row decides (a missing file, a declared column not in the header) still fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .parquet import write_rows

# Values that may parse as the type: a cheap first pass so that a column full of text declared as a
# number costs one regex, not a cast per value. What passes is still cast, value by value on failure.
_MAY_PARSE = {
    "int": r"^[+-]?[0-9]+$",
    "float": r"^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf|infinity|nan)$",
    "bool": r"^(true|false|1|0)$",
    "date": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
}


@dataclass
class Repairs:
    """What a total staging changed: the owner's to read (log, `dataset refresh`, `doctor`), never an
    analyst's (no response, no `/metrics` label carries it)."""

    nulled: dict[str, int] = field(default_factory=dict)
    skipped_rows: int = 0
    dropped_ids: int = 0

    def __bool__(self) -> bool:
        return bool(self.nulled or self.skipped_rows or self.dropped_ids)

    def null(self, column: str, count: int) -> None:
        if count:
            self.nulled[column] = self.nulled.get(column, 0) + count

    def summary(self) -> str:
        """One line in the owner's words, or "" when nothing was changed."""
        nulled = sorted(self.nulled.items())
        parts = [f"{n:,} value(s) of {c!r} did not parse and are NULL" for c, n in nulled]
        if self.skipped_rows:
            parts.append(
                f"{self.skipped_rows:,} CSV line(s) or record(s) skipped (the wrong number of fields, "
                "a quote not as RFC 4180 has it, or over 8 MiB)"
            )
        if self.dropped_ids:
            parts.append(f"{self.dropped_ids:,} row(s) with a missing or repeated id dropped")
        return "; ".join(parts)

    def as_log(self) -> dict:
        return {"nulled": self.nulled, "skipped_rows": self.skipped_rows, "dropped_ids": self.dropped_ids}


def _kind(to: pa.DataType) -> str | None:
    if pa.types.is_integer(to):
        return "int"
    if pa.types.is_floating(to):
        return "float"
    if pa.types.is_boolean(to):
        return "bool"
    if pa.types.is_date(to):
        return "date"
    return None


def _bisect(array: pa.Array, to: pa.DataType) -> pa.Array:
    """`array` cast to `to`, each value that does not convert as NULL."""
    try:
        return pc.cast(array, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(array) == 1:
            return pa.nulls(1, to)
    mid = len(array) // 2
    return pa.concat_arrays([_bisect(array.slice(0, mid), to), _bisect(array.slice(mid), to)])


def castable(source: pa.DataType, to: pa.DataType) -> bool:
    """Whether Arrow converts `source` to `to` at all, whatever the values (a list to a number never)."""
    try:
        pc.cast(pa.array([], source), to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False
    return True


def try_cast(array: pa.Array, to: pa.DataType) -> tuple[pa.Array, int]:
    """`array` as type `to`, with every value that does not convert as NULL; and how many did not. A
    type Arrow never converts to `to` is all NULL at once: bisecting it cast every value alone (a later
    Parquet file's list column of 200,000 rows took 6.4 s of CPU, so 10**7 rows about 5 minutes)."""
    if array.type == to:
        return array, 0
    valid = array.null_count
    if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        array = _bisect(array, pa.string())
    if not castable(array.type, to):
        return pa.nulls(len(array), to), len(array) - valid
    kind = _kind(to)
    if kind and pa.types.is_string(array.type):
        keep = pc.match_substring_regex(array, _MAY_PARSE[kind], ignore_case=True)
        array = pc.if_else(keep, array, pa.nulls(len(array), array.type))
    out = _bisect(array, to)
    return out, out.null_count - valid


def conform(batch: pa.RecordBatch, schema: pa.Schema, repairs: Repairs) -> pa.RecordBatch:
    """`batch` with `schema`'s columns, in its order, each value converted by `try_cast`; a column the
    batch lacks is all NULL, as a Parquet dataset scan gives it."""
    columns = []
    for target in schema:
        if target.name not in batch.schema.names:
            columns.append(pa.nulls(batch.num_rows, target.type))
            continue
        column, nulled = try_cast(batch.column(target.name), target.type)
        repairs.null(target.name, nulled)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def drop_bad_ids(path: Path, id_column: str) -> int:
    """Rewrite `path` without the rows whose id is missing or repeated; how many rows went."""
    ids = pq.read_table(path, columns=[id_column]).column(0)
    if not ids.null_count and pc.count_distinct(ids).as_py() == len(ids):
        return 0
    counts = pc.value_counts(ids.drop_null())
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    kept = path.with_name(path.stem + "-ids.parquet")  # a temporary name: the sweep removes it
    try:
        with pq.ParquetFile(path) as source:
            batches = (
                batch.filter(
                    pc.and_(
                        pc.is_valid(batch.column(id_column)),
                        pc.invert(pc.is_in(batch.column(id_column), value_set=repeated)),
                    )
                )
                for batch in source.iter_batches()
            )
            write_rows(pa.RecordBatchReader.from_batches(source.schema_arrow, batches), kept)
        kept.replace(path)
    finally:
        kept.unlink(missing_ok=True)
    return len(ids) - pq.read_metadata(path).num_rows


def declared_problem(names: list[str], types: dict[str, pa.DataType]) -> str | None:
    """Why a CSV header cannot be staged totally, from the header alone: a column without a type."""
    untyped = [name for name in names if name not in types]
    if not untyped:
        return None
    return (
        "in modes dp and dp_eval_only every column needs a declared type (an inferred one would come "
        "from the rows, and the catalog shows it): add these to the source's `columns`: " + ", ".join(untyped)
    )
