"""The registry of dataset versions: which snapshot is version N of a dataset, and every refresh attempt.

A version is listed only once its snapshot file is complete and renamed (see `snapshots`), so a reader
never sees half a version. Numbers only grow: a pruned version keeps its row (marked `pruned`), so its
number is never given to other rows. SQLite in WAL mode, so the server reads while the owner's CLI
refreshes or prunes; each thread has its own connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .snapshots import Snapshot

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    dataset TEXT NOT NULL,
    number INTEGER NOT NULL,
    created TEXT NOT NULL,
    rows INTEGER NOT NULL,
    columns TEXT NOT NULL,
    inferred TEXT NOT NULL,
    schema_hash TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    source TEXT NOT NULL,
    pruned TEXT,
    PRIMARY KEY (dataset, number)
);
CREATE TABLE IF NOT EXISTS refreshes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    at TEXT NOT NULL,
    outcome TEXT NOT NULL,
    version INTEGER,
    reason TEXT,
    message TEXT
);
"""

OUTCOMES = ("new_version", "unchanged", "failed")


def snapshot_file(root: Path, dataset: str, content_hash: str) -> Path:
    """Where the snapshot with this content hash of a dataset lives under the snapshots folder."""
    return Path(root) / dataset / f"{content_hash}.parquet"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Version:
    dataset: str
    number: int
    created: str
    rows: int
    columns: list[tuple[str, str]]
    inferred: list[str]
    schema_hash: str
    content_hash: str
    source: str
    file: Path
    pruned: str | None = None


@dataclass(frozen=True)
class SchemaChange:
    added: list[str]
    dropped: list[str]
    retyped: list[tuple[str, str, str]]

    def __bool__(self) -> bool:
        return bool(self.added or self.dropped or self.retyped)


def schema_change(old: list[tuple[str, str]], new: list[tuple[str, str]]) -> SchemaChange:
    """Columns added, dropped and retyped (name, old type, new type) from `old` to `new`."""
    before, after = dict(old), dict(new)
    return SchemaChange(
        added=[c for c in after if c not in before],
        dropped=[c for c in before if c not in after],
        retyped=[(c, before[c], t) for c, t in after.items() if c in before and before[c] != t],
    )


@dataclass(frozen=True)
class RefreshStats:
    """What /metrics shows per dataset: the latest version and how refreshes went."""

    dataset: str
    latest: int | None
    outcomes: dict[str, int]
    failures: dict[str, int]
    last_success: str | None


class Versions:
    """Versions of every dataset served from one data directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "versions.sqlite"
        self._local = threading.local()
        with self._conn() as conn:
            conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def folder(self, dataset: str) -> Path:
        return self.root / dataset

    def _version(self, row: sqlite3.Row) -> Version:
        return Version(
            dataset=row["dataset"],
            number=row["number"],
            created=row["created"],
            rows=row["rows"],
            columns=[tuple(c) for c in json.loads(row["columns"])],
            inferred=json.loads(row["inferred"]),
            schema_hash=row["schema_hash"],
            content_hash=row["content_hash"],
            source=row["source"],
            file=snapshot_file(self.root, row["dataset"], row["content_hash"]),
            pruned=row["pruned"],
        )

    def latest(self, dataset: str) -> Version | None:
        row = (
            self._conn()
            .execute(
                "SELECT * FROM versions WHERE dataset = ? AND pruned IS NULL ORDER BY number DESC LIMIT 1",
                (dataset,),
            )
            .fetchone()
        )
        return self._version(row) if row else None

    def get(self, dataset: str, number: int) -> Version | None:
        """A version still served (not pruned), or None."""
        sql = "SELECT * FROM versions WHERE dataset = ? AND number = ? AND pruned IS NULL"
        row = self._conn().execute(sql, (dataset, number)).fetchone()
        return self._version(row) if row else None

    def history(self, dataset: str, include_pruned: bool = False) -> list[Version]:
        """Versions, oldest first."""
        sql = "SELECT * FROM versions WHERE dataset = ?" + ("" if include_pruned else " AND pruned IS NULL")
        rows = self._conn().execute(sql + " ORDER BY number", (dataset,)).fetchall()
        return [self._version(r) for r in rows]

    def add(self, dataset: str, snapshot: Snapshot, source: str) -> tuple[Version, bool]:
        """Register the snapshot as the next version, unless the latest one has the same content.

        Returns the version now latest and whether it is new.
        """
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            latest = self.latest(dataset)
            if latest is not None and latest.content_hash == snapshot.content_hash:
                conn.execute("COMMIT")
                return latest, False
            top = conn.execute("SELECT MAX(number) FROM versions WHERE dataset = ?", (dataset,)).fetchone()[0]
            conn.execute(
                "INSERT INTO versions (dataset, number, created, rows, columns, inferred, schema_hash, "
                "content_hash, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    dataset,
                    (top or 0) + 1,
                    _now(),
                    snapshot.rows,
                    json.dumps(snapshot.columns),
                    json.dumps(snapshot.inferred),
                    snapshot.schema_hash,
                    snapshot.content_hash,
                    source,
                ),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return self.latest(dataset), True

    def prune(self, dataset: str, keep: int, in_use: set[int]) -> list[Version]:
        """Mark all but the newest `keep` versions pruned, except those in use; return the ones marked."""
        if keep < 1:
            raise ValueError("keep at least one version")
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            live = list(reversed(self.history(dataset)))
            doomed = sorted((v for v in live[keep:] if v.number not in in_use), key=lambda v: v.number)
            stamp = _now()
            conn.executemany(
                "UPDATE versions SET pruned = ? WHERE dataset = ? AND number = ?",
                [(stamp, dataset, v.number) for v in doomed],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return doomed

    def files_in_use(self, dataset: str) -> set[str]:
        """Snapshot file names that a version still served points to."""
        return {v.file.name for v in self.history(dataset)}

    def record_refresh(
        self,
        dataset: str,
        outcome: str,
        version: int | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        self._conn().execute(
            "INSERT INTO refreshes (dataset, at, outcome, version, reason, message) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (dataset, _now(), outcome, version, reason, message),
        )

    def last_refresh(self, dataset: str) -> dict | None:
        row = (
            self._conn()
            .execute("SELECT * FROM refreshes WHERE dataset = ? ORDER BY seq DESC LIMIT 1", (dataset,))
            .fetchone()
        )
        return dict(row) if row else None

    def stats(self, datasets: list[str]) -> list[RefreshStats]:
        conn = self._conn()
        counts = conn.execute(
            "SELECT dataset, outcome, reason, COUNT(*) AS n FROM refreshes GROUP BY dataset, outcome, reason"
        ).fetchall()
        success = dict(
            conn.execute(
                "SELECT dataset, MAX(at) FROM refreshes WHERE outcome != 'failed' GROUP BY dataset"
            ).fetchall()
        )
        result = []
        for name in datasets:
            outcomes = {o: 0 for o in OUTCOMES}
            failures: dict[str, int] = {}
            for row in counts:
                if row["dataset"] == name:
                    outcomes[row["outcome"]] += row["n"]
                    if row["outcome"] == "failed":
                        failures[row["reason"]] = failures.get(row["reason"], 0) + row["n"]
            latest = self.latest(name)
            result.append(
                RefreshStats(name, latest.number if latest else None, outcomes, failures, success.get(name))
            )
        return result
