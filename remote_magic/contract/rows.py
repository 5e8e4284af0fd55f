"""What admitted rows look like before any model sees them: the same on the server and in the dry run.

Non-finite numbers, and numbers beyond float32's range (XGBoost reads features as float32), become
missing values: XGBoost would refuse them, and a failure that depends on a row's value tells that value.
Text levels held by fewer than `min_count` admitted rows are merged into one level, `(rare)`, before any
encoding, so no feature name a model or an encoder makes from a level (`region_QUOKKA`) can carry a value
that describe would not show.

The server streams rows in batches: `clean` applies to each batch as it passes (a row's own values
decide it), while rare levels need every admitted row counted first (`count_levels`, `rare_levels`),
then `merge_rare` applies to each batch whenever it is read.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import pandas as pd

RARE_LEVEL = "(rare)"
FLOAT32_MAX = 3.4028234663852886e38  # the largest float32: past it XGBoost reads inf and refuses the rows


def is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_)


def clean(batch: pa.RecordBatch | pa.Table, features: list[str]) -> pa.RecordBatch | pa.Table:
    """The rows' feature columns with numbers that are not finite float32 values missing and text as
    plain strings."""
    arrays = []
    for name in features:
        column = batch.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_floating(column.type):
            kept = pc.and_(pc.is_finite(column), pc.less_equal(pc.abs(column), FLOAT32_MAX))
            column = pc.if_else(kept, column, pa.scalar(None, column.type))
        arrays.append(column)
    return type(batch).from_arrays(arrays, names=features)


def as_pandas(table: pa.Table) -> pd.DataFrame:
    """The rows as pandas, each column's dtype from its Arrow type (public), never from its values:
    numbers and booleans as float64 (missing: NaN), text as objects. Left to pandas, one missing value
    turned an integer column into floats and a boolean one into objects."""
    numeric = [
        pc.cast(c, pa.float64())
        if pa.types.is_boolean(c.type)
        or pa.types.is_integer(c.type)
        or pa.types.is_floating(c.type)
        or pa.types.is_decimal(c.type)
        else c
        for c in table.columns
    ]
    return pa.Table.from_arrays(numeric, names=table.column_names).to_pandas()


def count_levels(counts: dict[str, Counter], batch: pa.RecordBatch | pa.Table) -> None:
    """Add the rows of each level of the batch's text columns to `counts` (missing values are no level)."""
    for name, column in zip(batch.schema.names, batch.columns):
        if is_text(column.type):
            found = counts.setdefault(name, Counter())
            value_counts = pc.value_counts(column.drop_null())
            for value, n in zip(value_counts.field("values"), value_counts.field("counts")):
                found[value.as_py()] += n.as_py()


def rare_levels(counts: dict[str, Counter], min_count: int) -> dict[str, set[str]]:
    """The levels of each text column held by fewer than `min_count` rows (only columns that have some)."""
    rare = {name: {v for v, n in found.items() if n < min_count} for name, found in counts.items()}
    return {name: levels for name, levels in rare.items() if levels}


def merge_rare(batch: pa.RecordBatch | pa.Table, rare: dict[str, set[str]]) -> pa.RecordBatch | pa.Table:
    """The batch with each rare level of a text column replaced by `(rare)`."""
    for name, levels in rare.items():
        if name not in batch.schema.names:
            continue
        index = batch.schema.get_field_index(name)
        column = batch.column(index)
        merged = pc.if_else(
            pc.is_in(column, value_set=pa.array(sorted(levels), column.type)), RARE_LEVEL, column
        )
        batch = batch.set_column(index, name, merged.cast(column.type))
    return batch


def levels(counts: dict[str, Counter], rare: dict[str, set[str]]) -> dict[str, set[str]]:
    """The levels each text column has once its rare ones are merged."""
    out = {}
    for name, found in counts.items():
        merged = rare.get(name, set())
        out[name] = (set(found) - merged) | ({RARE_LEVEL} if merged else set())
    return out


def prepare(table: pa.Table, features: list[str], min_count: int) -> pa.Table:
    """The admitted rows (all in memory) with non-finite feature values missing and rare text levels
    merged."""
    prepared = clean(table, features)
    counts: dict[str, Counter] = {}
    count_levels(counts, prepared)
    prepared = merge_rare(prepared, rare_levels(counts, min_count))
    for name in features:
        table = table.set_column(table.schema.get_field_index(name), name, prepared.column(name))
    return table
