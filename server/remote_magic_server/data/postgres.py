"""PostgreSQL as a source: a table or one read-only query, through ADBC's PostgreSQL driver."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pyarrow as pa

from ..config.sources import PostgresSourceConfig
from .parquet import write_rows
from .snapshots import missing_roles
from .source import Source, SourceError


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

    def _source(self) -> str:
        """The FROM clause: the table, or the owner's query as a subquery."""
        from sqlglot import exp

        if self.config.table:
            return exp.to_table(self.config.table).sql("postgres", identify=True)
        return f"({self.config.query.strip().rstrip(';')}) AS source"

    def _sql(self) -> str:
        from sqlglot import exp

        order = exp.column(self.id_column, quoted=True).sql("postgres")
        return f"SELECT * FROM {self._source()} ORDER BY {order}"

    def _check_id(self, cur) -> None:
        """The id column among the source's columns (no row read), else the words a CSV source gets,
        not the database's error about the ORDER BY."""
        cur.execute(f"SELECT * FROM {self._source()} LIMIT 0")
        problems = missing_roles(cur.fetch_arrow_table().column_names, self.id_column, [])
        if problems:
            raise self.fail("invalid_snapshot", "; ".join(problems))

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
                    self._check_id(cur)
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
