"""S3 (or any S3-compatible store) as a source: Parquet or CSV objects under a prefix."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pyarrow import fs

from ..config.sources import S3SourceConfig
from .files import CsvSource, ParquetSource, objects_under
from .source import Source, SourceError


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
                files = objects_under(filesystem, bucket_and_prefix.rstrip("/"))
                inner = CsvSource(self.description, files, filesystem, self.config.columns)
            inner.total, inner.repairs = self.total, self.repairs
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
