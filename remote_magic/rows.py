"""What admitted rows look like before any model sees them: the same on the server and in the dry run.

Non-finite numbers become missing values (XGBoost would refuse them, and a failure that depends on a
row's value tells that value). Text levels held by fewer than `min_count` admitted rows are merged into
one level, `(rare)`, before any encoding, so no feature name a model or an encoder makes from a level
(`region_QUOKKA`) can carry a value that describe would not show.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

RARE_LEVEL = "(rare)"


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_)


def prepare(table: pa.Table, features: list[str], min_count: int) -> pa.Table:
    """The admitted rows with non-finite feature values missing and rare text levels merged."""
    columns = {}
    for name in features:
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_floating(column.type):
            column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type))
        elif _is_text(column.type):
            counts = pc.value_counts(column.drop_null())
            rare = [
                v.as_py()
                for v, n in zip(counts.field("values"), counts.field("counts"))
                if n.as_py() < min_count
            ]
            if rare:
                merged = pc.if_else(
                    pc.is_in(column, value_set=pa.array(rare, column.type)), RARE_LEVEL, column
                )
                column = merged.cast(column.type)
        columns[name] = column
    for name, column in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table
