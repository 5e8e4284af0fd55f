"""Files as sources: a Parquet file or folder (hive partitions become text columns), CSV files with the
owner's types. Any pyarrow filesystem: the local one, or S3 (see `s3.py`)."""

from __future__ import annotations

import csv
import glob
import os
import re
import shutil
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow import fs

from .csvtotal import TotalCsv
from .parquet import COPY_CHUNK, write_rows
from .source import Source
from .total import conform, declared_problem

HEADER_BYTES = 1 << 16


class ParquetSource(Source):
    """A Parquet file (copied byte for byte) or a folder of them (hive partitions become text columns)."""

    def __init__(self, description: str, path: str, filesystem: fs.FileSystem):
        super().__init__(description)
        self.path = path
        self.filesystem = filesystem

    def stage(self, dest: Path) -> list[str]:
        info = self.filesystem.get_file_info(self.path)
        if info.type == fs.FileType.File:
            with self.filesystem.open_input_stream(self.path) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, COPY_CHUNK)
            return []
        if info.type != fs.FileType.Directory:
            raise self.fail("not_found", "no such file or folder")
        found = ds.dataset(self.path, filesystem=self.filesystem, format="parquet")
        if not found.files:
            raise self.fail("not_found", "no Parquet files in the folder")
        # Partition values are read as text: a type inferred from the folders' names would come from
        # the rows' values (year=2024 everywhere but one row's year=2024.5), and types are public.
        keys = _hive_keys(found.files[0], self.path)
        dataset = found
        first = set(found.schema.names)
        later = (name for f in found.get_fragments() for name in f.physical_schema.names)
        self.left_out = sorted({name for name in later if name not in first})
        self._check_types(found)
        if keys:
            text = ds.partitioning(pa.schema([(key, pa.string()) for key in keys]), flavor="hive")
            dataset = ds.dataset(self.path, filesystem=self.filesystem, format="parquet", partitioning=text)
        try:
            if self.total:
                write_rows(self._conformed(dataset, text if keys else None), dest)
            else:
                write_rows(dataset.scanner().to_reader(), dest)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise self.fail("invalid_snapshot", "the Parquet files do not share one schema") from None
        return []

    def _check_types(self, found: ds.FileSystemDataset) -> None:
        """A later file whose column has another type than the first file's, which the folder takes: in
        mode rules an error naming the file and the column, unless the type is of the same kind and
        every value converts (int32 for int64, 3.0 for 3); in the noisy modes (`total`) its values are
        converted one by one, and the owner's note names it (a writer's type there may come from one
        row: pandas writes integers as double when one is missing)."""
        schema = found.schema
        first = _relative(found.files[0], self.path)
        for fragment in found.get_fragments():
            for field in fragment.physical_schema:
                if field.name not in schema.names or pa.types.is_null(field.type):
                    continue
                want = schema.field(field.name).type
                if field.type == want:
                    continue
                where = f"column {field.name!r} of {_relative(fragment.path, self.path)}"
                if self.total:
                    self.retyped.append(f"{where} is {field.type}, converted to the first file's {want}")
                elif _type_kind(field.type) != _type_kind(want) or not self._converts(fragment, field, want):
                    raise self.fail(
                        "invalid_snapshot",
                        f"{where} is {field.type}, and {want} in the first file ({first}), whose types the "
                        f"folder takes: write that file's column as {want}",
                    )

    def _converts(self, fragment: ds.ParquetFileFragment, field: pa.Field, to: pa.DataType) -> bool:
        """Whether every value of one file's column converts to `to` without loss (mode rules)."""
        column = pq.read_table(fragment.path, columns=[field.name], filesystem=self.filesystem).column(0)
        try:
            pc.cast(column, to)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return False
        return True

    def _conformed(self, dataset: ds.Dataset, partitioning: ds.Partitioning | None) -> pa.RecordBatchReader:
        """Each file read with its own types, then converted value by value to the first file's (`total`):
        a later file written as double because one row held 2.5 gets NULL there, never a failure."""
        schema = dataset.schema

        def batches() -> Iterator[pa.RecordBatch]:
            for file in dataset.files:
                one = ds.dataset(
                    [file],
                    filesystem=self.filesystem,
                    format="parquet",
                    partitioning=partitioning,
                    partition_base_dir=self.path,
                )
                for batch in one.to_batches():
                    yield conform(batch, schema, self.repairs)

        return pa.RecordBatchReader.from_batches(schema, batches())


def _relative(file: str, root: str) -> str:
    """A file of a folder as the owner knows it: its path below the folder (`region=north/part.parquet`)."""
    return os.path.relpath(file, root)


def _type_kind(type_: pa.DataType) -> str:
    """Numbers, text, true/false and times each convert within their kind; any other type only to itself."""
    if pa.types.is_dictionary(type_):
        return _type_kind(type_.value_type)
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_):
        return "number"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "text"
    if pa.types.is_boolean(type_):
        return "true/false"
    if pa.types.is_temporal(type_):
        return "time"
    return str(type_)


def _hive_keys(file: str, root: str) -> list[str]:
    """The partition keys a file's folders name (`region=north/year=2024/part.parquet`), in order."""
    folders = os.path.relpath(file, root).split(os.sep)[:-1]
    return [folder.split("=", 1)[0] for folder in folders if "=" in folder]


class CsvSource(Source):
    """CSV files, typed as the owner declared; a column not declared is inferred here, once."""

    def __init__(
        self,
        description: str,
        files: Callable[[], list[str]],
        filesystem: fs.FileSystem,
        types: dict[str, str],
        delimiter: str = ",",
    ):
        super().__init__(description)
        self.files = files
        self.filesystem = filesystem
        self.types = {name: pa.type_for_alias(alias) for name, alias in types.items()}
        self.delimiter = delimiter

    def stage(self, dest: Path) -> list[str]:
        files = self.files()
        if not files:
            raise self.fail("not_found", "no CSV file matches")
        names = self._header(files[0])
        missing = [name for name in self.types if name not in names]
        if missing:
            raise self.fail("invalid_snapshot", f"declared column(s) not in the CSV: {missing}")
        if self.total:
            return self._stage_total(files, names, dest)
        try:
            first = self._read(files[0], self.types, [])
            schema = first.schema
            fixed = dict(zip(schema.names, schema.types))

            def batches() -> Iterator[pa.RecordBatch]:
                yield from first
                for path in files[1:]:
                    yield from self._read(path, fixed, schema.names)

            write_rows(pa.RecordBatchReader.from_batches(schema, batches()), dest)
        except pa.ArrowInvalid as exc:
            raise self.fail("invalid_snapshot", _csv_problem(str(exc), names, self.types)) from None
        return [name for name in schema.names if name not in self.types]

    def _stage_total(self, files: list[str], names: list[str], dest: Path) -> list[str]:
        """Each line read on its own (`csvtotal`), each value converted to its declared type (`total`)."""
        problem = declared_problem(names, self.types)
        if problem:
            raise self.fail("invalid_snapshot", problem)
        schema = pa.schema([(name, self.types[name]) for name in names])

        def skip() -> None:
            self.repairs.skipped_rows += 1

        def batches() -> Iterator[pa.RecordBatch]:
            for path in files:
                with self.filesystem.open_input_stream(path) as stream:
                    rows = TotalCsv(stream, names, self.delimiter, skip)
                    if rows.missing:  # a later file's header: no row decides it
                        missing = rows.missing
                        raise self.fail("invalid_snapshot", f"a CSV file lacks declared column(s) {missing}")
                    for batch in rows:
                        yield conform(batch, schema, self.repairs)

        write_rows(pa.RecordBatchReader.from_batches(schema, batches()), dest)
        return []

    def _read(
        self,
        path: str,
        types: dict[str, pa.DataType],
        names: list[str],
    ) -> pacsv.CSVStreamingReader:
        """One file, read front to back (mode rules); later files take the first file's types and column
        order. Quoted line breaks are framed as quotes say: without, one straddling Arrow's 1 MiB block
        failed a well-formed file (measured: no slower on a 1M-row file, docs/deployment.md)."""
        return pacsv.open_csv(
            self.filesystem.open_input_stream(path),
            parse_options=pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=names, strings_can_be_null=True
            ),
        )

    def _header(self, path: str) -> list[str]:
        """The first file's column names, read before any value is converted."""
        with self.filesystem.open_input_stream(path) as stream:
            first = stream.read(HEADER_BYTES).decode("utf-8", "replace").splitlines()
        return next(csv.reader(first[:1], delimiter=self.delimiter), [])


def _csv_problem(text: str, names: list[str], declared: Collection[str] = ()) -> str:
    """Arrow's CSV error without the offending value or row, which are data."""
    convert = re.search(r"column #(\d+).*?conversion error to (\S+?):", text, re.S)
    if convert:
        index = int(convert.group(1))
        column = repr(names[index]) if index < len(names) else f"#{index}"
        if index < len(names) and names[index] in declared:
            return (
                f"column {column} is declared {convert.group(2)} in `columns`, and a value does not parse "
                "as that: fix the source's values, or declare the type they have"
            )
        return (
            f"column {column} has a value that does not parse as {convert.group(2)}; "
            "declare the column's type in `columns`"
        )
    fields = re.search(r"Expected (\d+) columns, got (\d+)", text)
    if fields:
        return f"a row has {fields.group(2)} fields where {fields.group(1)} were expected"
    return "the CSV files could not be read (mixed schemas or a malformed file)"


def local_glob(pattern: str) -> Callable[[], list[str]]:
    return lambda: sorted(p for p in glob.glob(pattern) if os.path.isfile(p))


def objects_under(filesystem: fs.FileSystem, prefix: str) -> Callable[[], list[str]]:
    def listing() -> list[str]:
        selector = fs.FileSelector(prefix, recursive=True, allow_not_found=True)
        infos = filesystem.get_file_info(selector)
        files = [i for i in infos if i.type == fs.FileType.File]
        return sorted(i.path for i in files if not i.base_name.startswith((".", "_")))

    return listing
