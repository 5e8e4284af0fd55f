"""The source a dataset's `source` table describes: one implementation per kind, chosen here only."""

from __future__ import annotations

from pyarrow import fs

from ..config.sources import CsvSourceConfig, ParquetSourceConfig, PostgresSourceConfig, SourceConfig
from .files import CsvSource, ParquetSource, local_glob
from .postgres import PostgresSource
from .s3 import S3Source
from .source import REASONS, Source, SourceError

__all__ = ["REASONS", "Source", "SourceError", "source_for"]


def source_for(config: SourceConfig, id_column: str) -> Source:
    """The source a dataset's `source` table describes."""
    if isinstance(config, ParquetSourceConfig):
        return ParquetSource(config.describe(), str(config.path), fs.LocalFileSystem())
    if isinstance(config, CsvSourceConfig):
        files = local_glob(config.path)
        return CsvSource(config.describe(), files, fs.LocalFileSystem(), config.columns, config.delimiter)
    if isinstance(config, PostgresSourceConfig):
        return PostgresSource(config, id_column)
    return S3Source(config)
