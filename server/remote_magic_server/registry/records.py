"""The registry's store: models, their numbered versions with lineage, aliases, and registration outcomes.

SQLite in the data directory (`registry.sqlite`, see sqlitedb.py). A version points at the job whose
model it is: the model file stays in that job's folder, and a registered job's model is never pruned.
Registering is idempotent per job (a job registers at most one version, even when its hand-over is
repeated after a crash), and numbers only grow: a deleted version keeps its row, so its number is never
given to another model.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..sqlitedb import Database, now

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, owner TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    number INTEGER NOT NULL,
    job_id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    dataset TEXT NOT NULL,
    dataset_version TEXT,
    origin TEXT NOT NULL,
    parent_name TEXT,
    parent_number INTEGER,
    base_sha256 TEXT,
    spec TEXT NOT NULL,
    params TEXT NOT NULL,
    result TEXT NOT NULL,
    created TEXT NOT NULL,
    deleted TEXT,
    PRIMARY KEY (name, number)
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    number INTEGER NOT NULL,
    moved_at TEXT NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS outcomes (
    job_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    ref TEXT,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_by_dataset ON versions (dataset);
"""
_MIGRATIONS: dict[int, str] = {}


@dataclass(frozen=True)
class VersionRow:
    name: str
    number: int
    job_id: str
    owner: str
    dataset: str
    dataset_version: str | None
    origin: str
    parent: str | None
    base_sha256: str | None
    spec: dict
    params: dict
    result: dict
    created: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.number}"


@dataclass(frozen=True)
class NewVersion:
    """What a successful job brings to its registration."""

    job_id: str
    owner: str
    dataset: str
    dataset_version: str | None
    origin: str
    parent: tuple[str, int] | None
    base_sha256: str | None
    spec: dict
    params: dict
    result: dict


class ModelRegistry:
    def __init__(self, path: Path):
        self.db = Database(path, _SCHEMA, _MIGRATIONS, SCHEMA_VERSION)

    def close(self) -> None:
        self.db.close()

    # reads
    def owner(self, name: str) -> str | None:
        row = self.db.read("SELECT owner FROM models WHERE name = ?", (name,)).fetchone()
        return row["owner"] if row else None

    def names(self) -> list[tuple[str, str]]:
        """(name, owner) of every model, by name."""
        return [(r["name"], r["owner"]) for r in self.db.read("SELECT name, owner FROM models ORDER BY name")]

    def version(self, name: str, number: int) -> VersionRow | None:
        row = self.db.read(
            "SELECT * FROM versions WHERE name = ? AND number = ? AND deleted IS NULL", (name, number)
        ).fetchone()
        return _version(row) if row else None

    def versions(self, name: str) -> list[VersionRow]:
        rows = self.db.read(
            "SELECT * FROM versions WHERE name = ? AND deleted IS NULL ORDER BY number", (name,)
        ).fetchall()
        return [_version(r) for r in rows]

    def by_dataset(self, dataset: str) -> list[VersionRow]:
        rows = self.db.read(
            "SELECT * FROM versions WHERE dataset = ? AND deleted IS NULL ORDER BY name, number", (dataset,)
        ).fetchall()
        return [_version(r) for r in rows]

    def latest(self, name: str) -> VersionRow | None:
        row = self.db.read(
            "SELECT * FROM versions WHERE name = ? AND deleted IS NULL ORDER BY number DESC LIMIT 1", (name,)
        ).fetchone()
        return _version(row) if row else None

    def aliases(self, name: str) -> dict[str, int]:
        rows = self.db.read("SELECT alias, number FROM aliases WHERE name = ? ORDER BY alias", (name,))
        return {r["alias"]: r["number"] for r in rows}

    def alias_moved(self, name: str, alias: str) -> tuple[int, str] | None:
        """(number, when it was moved there) of an alias."""
        row = self.db.read(
            "SELECT number, moved_at FROM aliases WHERE name = ? AND alias = ?", (name, alias)
        ).fetchone()
        return (row["number"], row["moved_at"]) if row else None

    def registered_jobs(self) -> set[str]:
        """Jobs whose model is a version that still exists (their model files are kept)."""
        return {r["job_id"] for r in self.db.read("SELECT job_id FROM versions WHERE deleted IS NULL")}

    def is_registered(self, job_id: str) -> bool:
        row = self.db.read(
            "SELECT 1 FROM versions WHERE job_id = ? AND deleted IS NULL", (job_id,)
        ).fetchone()
        return row is not None

    def outcome(self, job_id: str) -> tuple[str, str | None, str] | None:
        row = self.db.read("SELECT state, ref, message FROM outcomes WHERE job_id = ?", (job_id,)).fetchone()
        return (row["state"], row["ref"], row["message"]) if row else None

    # writes
    def claim_name(self, name: str, owner: str) -> bool:
        """Make `owner` the owner of a new name; False when the name belongs to someone else."""
        with self.db.write() as db:
            db.execute(
                "INSERT OR IGNORE INTO models (name, owner, created) VALUES (?, ?, ?)", (name, owner, now())
            )
            row = db.execute("SELECT owner FROM models WHERE name = ?", (name,)).fetchone()
        return row["owner"] == owner

    def register(self, name: str, new: NewVersion, alias: str | None) -> tuple[VersionRow, str | None]:
        """Add the job's model as the next version of `name` (once per job), move `alias` to it; return
        the version and the alias's previous number as text ('' when it is new, None when not moved)."""
        with self.db.write() as db:
            row = db.execute("SELECT * FROM versions WHERE job_id = ?", (new.job_id,)).fetchone()
            if row is not None:
                return _version(row), None
            top = db.execute("SELECT MAX(number) AS n FROM versions WHERE name = ?", (name,)).fetchone()
            number = (top["n"] or 0) + 1
            parent_name, parent_number = new.parent or (None, None)
            db.execute(
                "INSERT INTO versions (name, number, job_id, owner, dataset, dataset_version, origin,"
                " parent_name, parent_number, base_sha256, spec, params, result, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    number,
                    new.job_id,
                    new.owner,
                    new.dataset,
                    new.dataset_version,
                    new.origin,
                    parent_name,
                    parent_number,
                    new.base_sha256,
                    json.dumps(new.spec),
                    json.dumps(new.params),
                    json.dumps(new.result),
                    now(),
                ),
            )
            previous = _move(db, name, alias, number) if alias else None
            db.execute(
                "INSERT OR REPLACE INTO outcomes (job_id, state, ref, message) VALUES (?, ?, ?, ?)",
                (new.job_id, "registered", f"{name}@{number}", f"registered as {name}@{number}"),
            )
            created = db.execute(
                "SELECT * FROM versions WHERE name = ? AND number = ?", (name, number)
            ).fetchone()
        return _version(created), previous

    def record_outcome(self, job_id: str, state: str, message: str) -> None:
        """A registration that did not happen (its condition did not hold, or it was refused), and why."""
        with self.db.write() as db:
            db.execute(
                "INSERT OR IGNORE INTO outcomes (job_id, state, ref, message) VALUES (?, ?, NULL, ?)",
                (job_id, state, message),
            )

    def move_alias(self, name: str, alias: str, number: int) -> str | None:
        """Point an alias at a version; return the previous number as text ('' if new), None if unchanged."""
        with self.db.write() as db:
            return _move(db, name, alias, number)

    def delete_version(self, name: str, number: int) -> bool:
        """Delete a version (its aliases go with it); its number is never reused."""
        with self.db.write() as db:
            cur = db.execute(
                "UPDATE versions SET deleted = ? WHERE name = ? AND number = ? AND deleted IS NULL",
                (now(), name, number),
            )
            db.execute("DELETE FROM aliases WHERE name = ? AND number = ?", (name, number))
        return cur.rowcount == 1


def _move(db: sqlite3.Connection, name: str, alias: str, number: int) -> str | None:
    row = db.execute("SELECT number FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
    if row is not None and row["number"] == number:
        return None
    db.execute(
        "INSERT OR REPLACE INTO aliases (name, alias, number, moved_at) VALUES (?, ?, ?, ?)",
        (name, alias, number, now()),
    )
    return "" if row is None else str(row["number"])


def _version(row: sqlite3.Row) -> VersionRow:
    parent = f"{row['parent_name']}@{row['parent_number']}" if row["parent_name"] else None
    return VersionRow(
        name=row["name"],
        number=row["number"],
        job_id=row["job_id"],
        owner=row["owner"],
        dataset=row["dataset"],
        dataset_version=row["dataset_version"],
        origin=row["origin"],
        parent=parent,
        base_sha256=row["base_sha256"],
        spec=json.loads(row["spec"]),
        params=json.loads(row["params"]),
        result=json.loads(row["result"]),
        created=row["created"],
    )
