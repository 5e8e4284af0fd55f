"""One SQLite database file as the server's stores use it: WAL, synchronous=FULL, versioned migrations.

Writes go through one connection under a lock, in short transactions that are on disk before they
return; reads use a connection per thread, so a read never waits behind a write. A database carries its
schema version: version 1 is the `schema` given, each later version a list of statements in
`migrations`; an older file is brought up to date in one transaction at start-up and a newer one is
refused, so an old server never writes a store it does not understand.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path


class StoreError(Exception):
    """The store cannot be used by this version of the server."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Database:
    """A SQLite file with a versioned schema; `write()` for transactions, `read()` for queries."""

    def __init__(self, path: Path, schema: str, migrations: dict[int, str], version: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.writer = self._connect()
        self.writer.execute("PRAGMA journal_mode=WAL")
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        with self.lock:
            self.writer.executescript(schema)
            self.writer.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.writer.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1')")
            self._migrate(migrations, version)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def schema_version(self) -> int:
        return int(self.read("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()["value"])

    def _migrate(self, migrations: dict[int, str], version: int) -> None:
        found = self.schema_version()
        if found > version:
            raise StoreError(
                f"{self.path.name} has schema version {found}, newer than this server's {version}; "
                "upgrade remote-magic"
            )
        for target in range(found + 1, version + 1):
            with self.write() as db:
                for statement in migrations[target].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(target),))

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction: committed when the block ends, rolled back if it raises."""
        with self.lock:
            self.writer.execute("BEGIN IMMEDIATE")
            try:
                yield self.writer
            except BaseException:
                self.writer.execute("ROLLBACK")
                raise
            self.writer.execute("COMMIT")

    def read(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        """Run a read on this thread's own connection, without taking the write lock."""
        reader = getattr(self._local, "db", None)
        if reader is None:
            reader = self._connect()
            reader.execute("PRAGMA query_only=1")
            self._local.db = reader
            with self.lock:
                self._readers.append(reader)
        return reader.execute(sql, params)

    def close(self) -> None:
        with self.lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()
            self.writer.close()
