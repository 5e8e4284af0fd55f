"""Where a dataset's rows live, as the owner writes it in `server.toml`: one `source` table per dataset.

Secrets never appear in the file: a source names the environment variables that hold them
(`password_env`, `dsn_env`, `secret_key_env`), and they are read only when a refresh runs. The
`describe()` of each source says where it reads in words that hold no secret, for messages and logs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in `"90s"`, `"30m"`, `"1h"` or `"7d"`; anything else is a ValueError."""
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration like '90s', '30m', '1h' or '7d'")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _check_column_types(value: dict[str, str]) -> dict[str, str]:
    import pyarrow as pa

    for column, alias in value.items():
        try:
            pa.type_for_alias(alias)
        except ValueError:
            raise ValueError(
                f"column {column!r}: unknown type {alias!r} (use an Arrow name such as int64, float64, "
                "string, bool, date32, timestamp[s])"
            ) from None
    return value


def not_csv(path: Path | None) -> Path | None:
    """A Parquet path that names a CSV file is told how a CSV source is declared, before a read fails
    on it with "no magic bytes"."""
    if path is not None and path.name.lower().endswith((".csv", ".csv.gz", ".tsv")):
        raise ValueError(
            f"{path} looks like a CSV file and `path` reads Parquet: declare it as "
            f'source = {{ kind = "csv", path = "{path}" }} (column types optional: columns = {{ ... }})'
        )
    return path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParquetSourceConfig(_Strict):
    """A Parquet file, or a folder of them (hive partitions `key=value/` become columns)."""

    kind: Literal["parquet"] = "parquet"
    path: Path

    _parquet = field_validator("path")(not_csv)

    def describe(self) -> str:
        return f"parquet {self.path}"


class CsvSourceConfig(_Strict):
    """A CSV file or a glob of them, with the owner's column types."""

    kind: Literal["csv"]
    path: str = Field(description="A file, or a glob such as 'exports/claims-*.csv'.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Arrow type per column; a column not listed is inferred once, at snapshot time.",
    )
    delimiter: str = Field(default=",", min_length=1, max_length=1)

    _types = field_validator("columns")(_check_column_types)

    def describe(self) -> str:
        return f"csv {self.path}"


class PostgresSourceConfig(_Strict):
    """A table or a read-only query, read through ADBC's PostgreSQL driver into Arrow."""

    kind: Literal["postgres"]
    dsn_env: str | None = Field(
        default=None, description="Environment variable holding a postgresql:// URI (may hold a password)."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str = "postgres"
    user: str | None = None
    password_env: str | None = Field(default=None, description="Environment variable holding the password.")
    table: str | None = Field(default=None, description="'schema.table' or 'table'.")
    query: str | None = Field(default=None, description="One read-only SELECT.")
    timeout_s: int = Field(default=600, ge=1, description="statement_timeout of the snapshot query.")
    connect_timeout_s: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _table_or_query(self) -> PostgresSourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("a postgres source needs exactly one of `table` and `query`")
        return self

    def describe(self) -> str:
        where = f"${self.dsn_env}" if self.dsn_env else f"{self.host}:{self.port}/{self.dbname}"
        what = f"table {self.table}" if self.table else "query"
        return f"postgres {where} {what}"


class S3SourceConfig(_Strict):
    """Parquet or CSV objects under an S3 prefix; endpoint from here or AWS_ENDPOINT_URL, keys from env."""

    kind: Literal["s3"]
    url: str = Field(pattern=r"^s3://[^/]+(/.*)?$", description="s3://bucket/prefix/")
    format: Literal["parquet", "csv"] = "parquet"
    columns: dict[str, str] = Field(default_factory=dict, description="CSV only: Arrow type per column.")
    endpoint: str | None = Field(default=None, description="e.g. https://minio.internal:9000")
    region: str | None = None
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 - a variable name
    timeout_s: int = Field(default=60, ge=1, description="Connect and request timeout.")

    _types = field_validator("columns")(_check_column_types)

    def describe(self) -> str:
        return f"s3 {self.url}"


SourceConfig = Annotated[
    ParquetSourceConfig | CsvSourceConfig | PostgresSourceConfig | S3SourceConfig,
    Field(discriminator="kind"),
]


def resolve_source_paths(source: SourceConfig, base: Path) -> None:
    """Make a file source's path absolute, relative to the config file's folder."""
    if isinstance(source, ParquetSourceConfig) and not source.path.is_absolute():
        source.path = (base / source.path).resolve()
    elif isinstance(source, CsvSourceConfig) and not Path(source.path).is_absolute():
        source.path = str(base / source.path)


def staged_as(config: SourceConfig) -> str:
    """Whose types a total staging conformed the rows to, in the owner's words: a Parquet folder's
    types are its first file's (nobody declared them); a CSV file's are the declared `columns`."""
    parquet = isinstance(config, ParquetSourceConfig) or getattr(config, "format", None) == "parquet"
    return "staged as the first file's types say" if parquet else "staged as the declared types say"
