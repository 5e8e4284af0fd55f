"""Write a stream of Arrow batches as one Parquet file whose bytes depend only on the rows.

A snapshot's content hash is the SHA-256 of its file, so two snapshots of the same rows must be the
same bytes: metadata a driver attaches (PostgreSQL type names, pandas index hints) is dropped, driver
extension types become plain Arrow types, and row groups have a fixed size whatever batches arrived.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROW_GROUP_ROWS = 131_072
COPY_CHUNK = 1 << 20


def _plain_type(field: pa.Field) -> pa.DataType:
    """A driver's extension type as a plain one: PostgreSQL `numeric` as float64, others as storage."""
    if isinstance(field.type, pa.BaseExtensionType):
        if getattr(field.type, "type_name", None) == "numeric":
            return pa.float64()
        return field.type.storage_type
    return field.type


def plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, _plain_type(f), f.nullable) for f in schema])


def _plain_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    columns = []
    for column, field in zip(batch.columns, schema):
        if isinstance(column.type, pa.BaseExtensionType):
            column = column.storage
        columns.append(column if column.type == field.type else pc.cast(column, field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode text only: trying it on numbers costs more than half the write and saves little."""
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_dictionary)
    return [f.name for f in schema if any(check(f.type) for check in text)]


def write_rows(reader: pa.RecordBatchReader, dest: Path) -> None:
    """Write every batch of `reader` to `dest` in fixed-size row groups."""
    schema = plain_schema(reader.schema)
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    options = {"compression": "zstd", "use_dictionary": _dictionary_columns(schema)}
    with pq.ParquetWriter(dest, schema, **options) as writer:
        for batch in reader:
            pending.append(_plain_batch(batch, schema))
            pending_rows += batch.num_rows
            if pending_rows >= ROW_GROUP_ROWS:
                table = pa.Table.from_batches(pending, schema)
                full = pending_rows - pending_rows % ROW_GROUP_ROWS
                writer.write_table(table.slice(0, full), row_group_size=ROW_GROUP_ROWS)
                pending = table.slice(full).to_batches()
                pending_rows -= full
        writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=ROW_GROUP_ROWS)


def copy_file(source: Path, dest: Path) -> None:
    """Copy a Parquet file byte for byte: the owner's file already is a snapshot's format."""
    with open(source, "rb") as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst, COPY_CHUNK)
