"""The automation's SQLite file: recipes and their fires, webhook subscriptions, events and deliveries.

One file (`automation.sqlite` in the data directory, see sqlitedb.py) so that a recipe's fire, an event
and its deliveries commit together. Each module keeps its own statements: recipes.py the recipes and
fires, subscriptions.py the subscriptions, outbox.py the events and deliveries.
"""

from __future__ import annotations

from pathlib import Path

from ..sqlitedb import Database, now

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recipes (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    payload BLOB NOT NULL,
    state TEXT NOT NULL,
    paused_reason TEXT,
    seen TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (owner, name)
);
CREATE TABLE IF NOT EXISTS fires (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    recipe TEXT NOT NULL,
    key TEXT NOT NULL,
    trigger TEXT NOT NULL,
    job_id TEXT,
    outcome TEXT,
    fired_at TEXT NOT NULL,
    UNIQUE (owner, recipe, key)
);
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    created TEXT NOT NULL,
    deleted TEXT
);
CREATE TABLE IF NOT EXISTS events (
    key TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    event_key TEXT NOT NULL,
    target TEXT NOT NULL,
    webhook_id TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created TEXT NOT NULL,
    delivered_at TEXT,
    UNIQUE (event_key, target, webhook_id)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, target, next_attempt_at);
CREATE TABLE IF NOT EXISTS marks (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_MIGRATIONS: dict[int, str] = {}


def open_automation(path: Path) -> Database:
    """Open (and create or upgrade) the automation's database; record when it was first opened."""
    db = Database(path, _SCHEMA, _MIGRATIONS, SCHEMA_VERSION)
    with db.write() as conn:
        conn.execute("INSERT OR IGNORE INTO marks (key, value) VALUES ('handed_over_since', ?)", (now(),))
    return db


def mark(db: Database, key: str) -> str | None:
    row = db.read("SELECT value FROM marks WHERE key = ?", (key,)).fetchone()
    return row["value"] if row else None
