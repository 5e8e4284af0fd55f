"""Read a dataset's rows from where they live: one small interface, one implementation per kind.

`Source.stage(dest)` writes every row to one new Parquet file, in an order that depends only on the
source (sorted file names; `ORDER BY` the id column in PostgreSQL), so unchanged rows give the same
bytes. Only the trusted server runs this, never a sandboxed worker, which is why workers never need a
network. Every failure is a `SourceError` with a fixed `reason` (for metrics and the audit log) and a
message that names the source and never holds a secret or a data value.
"""

from __future__ import annotations

import csv
import glob
import os
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
from pyarrow import fs

from .config import (
    CsvSourceConfig,
    ParquetSourceConfig,
    PostgresSourceConfig,
    S3SourceConfig,
    SourceConfig,
)
from .parquet import COPY_CHUNK, write_rows

REASONS = (
    "config",
    "unreachable",
    "auth_failed",
    "not_found",
    "timeout",
    "query_failed",
    "invalid_snapshot",
    "unreadable",
)


HEADER_BYTES = 1 << 16


class SourceError(Exception):
    """A source could not be read or its rows cannot be a snapshot."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class Source(ABC):
    """One place a dataset's rows come from."""

    def __init__(self, description: str):
        self.description = description

    @abstractmethod
    def stage(self, dest: Path) -> list[str]:
        """Write every row to `dest` as Parquet; return the columns whose type was inferred, not declared."""

    def fail(self, reason: str, problem: str) -> SourceError:
        return SourceError(reason, f"{self.description}: {problem}")


class ParquetSource(Source):
    """A Parquet file (copied byte for byte) or a folder of them (hive partitions become columns)."""

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
        dataset = ds.dataset(self.path, filesystem=self.filesystem, format="parquet", partitioning="hive")
        if not dataset.files:
            raise self.fail("not_found", "no Parquet files in the folder")
        try:
            write_rows(dataset.scanner().to_reader(), dest)
        except pa.ArrowInvalid:
            raise self.fail("invalid_snapshot", "the Parquet files do not share one schema") from None
        return list(dataset.partitioning.schema.names) if dataset.partitioning else []


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
            raise self.fail("invalid_snapshot", _csv_problem(str(exc), names)) from None
        return [name for name in schema.names if name not in self.types]

    def _read(self, path: str, types: dict[str, pa.DataType], names: list[str]) -> pacsv.CSVStreamingReader:
        """One file, read front to back; later files take the first file's types and column order."""
        return pacsv.open_csv(
            self.filesystem.open_input_stream(path),
            parse_options=pacsv.ParseOptions(delimiter=self.delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=names, strings_can_be_null=True
            ),
        )

    def _header(self, path: str) -> list[str]:
        """The first file's column names, read before any value is converted."""
        with self.filesystem.open_input_stream(path) as stream:
            first = stream.read(HEADER_BYTES).decode("utf-8", "replace").splitlines()
        return next(csv.reader(first[:1], delimiter=self.delimiter), [])


def _csv_problem(text: str, names: list[str]) -> str:
    """Arrow's CSV error without the offending value or row, which are data."""
    convert = re.search(r"column #(\d+).*?conversion error to (\S+?):", text, re.S)
    if convert:
        index = int(convert.group(1))
        column = repr(names[index]) if index < len(names) else f"#{index}"
        return (
            f"column {column} has a value that does not parse as {convert.group(2)}; "
            "declare the column's type in `columns`"
        )
    fields = re.search(r"Expected (\d+) columns, got (\d+)", text)
    if fields:
        return f"a row has {fields.group(2)} fields where {fields.group(1)} were expected"
    return "the CSV files could not be read (mixed schemas or a malformed file)"


def _local_glob(pattern: str) -> Callable[[], list[str]]:
    return lambda: sorted(p for p in glob.glob(pattern) if os.path.isfile(p))


def _objects_under(filesystem: fs.FileSystem, prefix: str) -> Callable[[], list[str]]:
    def listing() -> list[str]:
        selector = fs.FileSelector(prefix, recursive=True, allow_not_found=True)
        infos = filesystem.get_file_info(selector)
        files = [i for i in infos if i.type == fs.FileType.File]
        return sorted(i.path for i in files if not i.base_name.startswith((".", "_")))

    return listing


class PostgresSource(Source):
    """A table or one read-only query, read through ADBC's PostgreSQL driver (binary COPY) into Arrow.

    The session is made read-only and given a statement timeout before the query runs; the rows come
    back `ORDER BY` the id column, so the same rows give the same snapshot.
    """

    def __init__(self, config: PostgresSourceConfig, id_column: str):
        super().__init__(config.describe())
        self.config = config
        self.id_column = id_column

    def _uri(self) -> tuple[str, list[str]]:
        """The connection URI and the secrets it holds (to scrub from any message)."""
        config = self.config
        if config.dsn_env:
            dsn = os.environ.get(config.dsn_env)
            if not dsn:
                raise self.fail("config", f"the environment variable {config.dsn_env} is not set")
            parts = urlsplit(dsn)
            if parts.scheme not in ("postgres", "postgresql"):
                raise self.fail("config", f"${config.dsn_env} must hold a postgresql:// URI")
            query = dict(parse_qsl(parts.query))
            query.setdefault("connect_timeout", str(config.connect_timeout_s))
            secrets = [dsn] + ([parts.password] if parts.password else [])
            return urlunsplit(parts._replace(query=urlencode(query))), secrets
        password = ""
        if config.password_env:
            password = os.environ.get(config.password_env, "")
            if not password:
                raise self.fail("config", f"the environment variable {config.password_env} is not set")
        user = quote(config.user or "", safe="")
        auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
        uri = (
            f"postgresql://{auth}{config.host}:{config.port}/{quote(config.dbname, safe='')}"
            f"?connect_timeout={config.connect_timeout_s}"
        )
        return uri, [s for s in (password, quote(password, safe="")) if s]

    def _sql(self) -> str:
        from sqlglot import exp

        order = exp.column(self.id_column, quoted=True).sql("postgres")
        if self.config.table:
            table = exp.to_table(self.config.table).sql("postgres", identify=True)
            return f"SELECT * FROM {table} ORDER BY {order}"
        query = self.config.query.strip().rstrip(";")
        return f"SELECT * FROM ({query}) AS source ORDER BY {order}"

    def stage(self, dest: Path) -> list[str]:
        import adbc_driver_postgresql.dbapi as pg

        uri, secrets = self._uri()
        try:
            with pg.connect(uri) as conn:
                with conn.cursor() as cur:
                    cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                    cur.execute(f"SET statement_timeout = {int(self.config.timeout_s) * 1000}")
                conn.commit()
                with conn.cursor() as cur:
                    cur.execute(self._sql())
                    write_rows(cur.fetch_record_batch(), dest)
                conn.rollback()
        except (pg.Error, pa.ArrowException) as exc:
            raise self._failure(exc, secrets) from None
        except OSError as exc:  # the driver's errors while streaming rows arrive as Arrow I/O errors
            if "[libpq]" not in str(exc):
                raise
            raise self._failure(exc, secrets) from None
        return []

    def _failure(self, exc: Exception, secrets: list[str]) -> SourceError:
        text = str(exc)
        for secret in secrets:
            text = text.replace(secret, "***")
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Query was")]
        detail = re.sub(r"^(\w+: )?\[libpq\] ", "", " ".join(lines)).strip()
        detail = re.sub(r"\s*\.?\s*SQLSTATE: \w+$", "", detail).rstrip(". ")
        state = getattr(exc, "sqlstate", None) or ""
        if state.startswith("28") or "authentication failed" in detail or "pg_hba.conf" in detail:
            reason = "auth_failed"
        elif state == "57014" or "statement timeout" in detail:
            reason = "timeout"
        elif state in ("3D000", "42P01", "3F000"):
            reason = "not_found"
        elif state.startswith(("08", "57P")) or "Failed to connect" in detail or "connection" in detail:
            reason = "unreachable"
        else:
            reason = "query_failed"
        return self.fail(reason, detail)


class S3Source(Source):
    """Parquet or CSV objects under an S3 prefix, through pyarrow's S3 filesystem."""

    def __init__(self, config: S3SourceConfig):
        super().__init__(config.describe())
        self.config = config

    def _filesystem(self) -> tuple[fs.S3FileSystem, list[str]]:
        config = self.config
        keys = {}
        access, secret = os.environ.get(config.access_key_env), os.environ.get(config.secret_key_env)
        if access and secret:
            keys = {"access_key": access, "secret_key": secret}
        filesystem = fs.S3FileSystem(
            endpoint_override=config.endpoint,
            region=config.region,
            connect_timeout=config.timeout_s,
            request_timeout=config.timeout_s,
            **keys,
        )
        return filesystem, [s for s in (access, secret) if s]

    def stage(self, dest: Path) -> list[str]:
        filesystem, secrets = self._filesystem()
        bucket_and_prefix = self.config.url.removeprefix("s3://")
        bucket = bucket_and_prefix.split("/", 1)[0]
        try:
            if filesystem.get_file_info(bucket).type == fs.FileType.NotFound:
                raise self.fail("not_found", f"the bucket {bucket!r} does not exist")
            if self.config.format == "parquet":
                inner: Source = ParquetSource(self.description, bucket_and_prefix.rstrip("/"), filesystem)
            else:
                files = _objects_under(filesystem, bucket_and_prefix.rstrip("/"))
                inner = CsvSource(self.description, files, filesystem, self.config.columns)
            return inner.stage(dest)
        except OSError as exc:
            raise self._failure(str(exc), secrets) from None

    def _failure(self, text: str, secrets: list[str]) -> SourceError:
        for secret in secrets:
            text = text.replace(secret, "***")
        if "NETWORK_CONNECTION" in text or "curlCode" in text:
            reason = "unreachable"
        elif re.search(r"ACCESS_DENIED|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch", text):
            reason = "auth_failed"
        elif "NoSuchBucket" in text or "NoSuchKey" in text:
            reason = "not_found"
        else:
            reason = "unreachable"
        return self.fail(reason, text.splitlines()[0] if text else "the request failed")


def source_for(config: SourceConfig, id_column: str) -> Source:
    """The source a dataset's `source` table describes."""
    if isinstance(config, ParquetSourceConfig):
        return ParquetSource(config.describe(), str(config.path), fs.LocalFileSystem())
    if isinstance(config, CsvSourceConfig):
        files = _local_glob(config.path)
        return CsvSource(config.describe(), files, fs.LocalFileSystem(), config.columns, config.delimiter)
    if isinstance(config, PostgresSourceConfig):
        return PostgresSource(config, id_column)
    return S3Source(config)
