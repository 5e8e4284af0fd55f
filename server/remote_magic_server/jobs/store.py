"""The job store: SQLite (WAL) for jobs and tokens, one folder per job for its payload and outputs.

Every transition is committed before it is acknowledged, so a restart finds each job where it was.
Tokens are stored as SHA-256 hashes: they are 256-bit random strings, so a plain hash is enough and a
leaked database does not leak a usable token.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    datasets TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    user TEXT NOT NULL,
    dataset TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    plan TEXT NOT NULL,
    idempotency_key TEXT,
    submitted_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    progress TEXT NOT NULL,
    isolation TEXT,
    result TEXT,
    error_code TEXT,
    error_message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 1,
    UNIQUE (user, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_user ON jobs (user, seq);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class JobRow:
    id: str
    user: str
    dataset: str
    kind: str
    state: str
    spec: dict
    plan: dict
    submitted_at: str
    started_at: str | None
    finished_at: str | None
    progress: dict
    isolation: dict | None
    result: dict | None
    error_code: str | None
    error_message: str | None
    attempts: int
    version: int


class Store:
    """Thread-safe access to the SQLite store; short transactions only."""

    def __init__(self, db_path: Path, jobs_dir: Path):
        self.jobs_dir = jobs_dir
        jobs_dir.mkdir(parents=True, exist_ok=True)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._lock:
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def ping(self) -> bool:
        try:
            with self._lock:
                self._db.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    # tokens
    def issue_token(self, user: str, datasets: list[str]) -> str:
        token = "rm_" + secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens (token_hash, user, datasets, created_at) VALUES (?, ?, ?, ?)",
                (hash_token(token), user, json.dumps(sorted(set(datasets))), now()),
            )
        return token

    def lookup_token(self, token: str) -> tuple[str, list[str]] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT user, datasets FROM tokens WHERE token_hash = ?", (hash_token(token),)
            ).fetchone()
        return (row["user"], json.loads(row["datasets"])) if row else None

    # jobs
    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def create_job(
        self,
        user: str,
        dataset: str,
        kind: str,
        spec: dict,
        plan: dict,
        payload: bytes,
        idempotency_key: str | None,
        state: str = "queued",
    ) -> tuple[JobRow, bool]:
        """Persist the payload and the job; return (job, created). An existing key returns its job.

        `plan` holds what the API resolved from the spec (features, filter columns), so the scheduler
        never needs to look at the catalog."""
        if idempotency_key is not None:
            existing = self._by_key(user, idempotency_key)
            if existing is not None:
                return existing, False
        job_id = uuid.uuid4().hex[:16]
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True)
        (folder / "model.pkl").write_bytes(payload)
        progress = json.dumps({"stage": "queued", "round": 0, "total_rounds": 0, "metric": None})
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO jobs (id, user, dataset, kind, state, spec, plan, idempotency_key,"
                    " submitted_at, progress) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        user,
                        dataset,
                        kind,
                        state,
                        json.dumps(spec),
                        json.dumps(plan),
                        idempotency_key,
                        now(),
                        progress,
                    ),
                )
            except sqlite3.IntegrityError:
                existing = self._by_key(user, idempotency_key or "")
                if existing is None:
                    raise
                return existing, False
        job = self.get_job(job_id)
        assert job is not None
        return job, True

    def _by_key(self, user: str, key: str) -> JobRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE user = ? AND idempotency_key = ?", (user, key)
            ).fetchone()
        return _row(row) if row else None

    def get_job(self, job_id: str) -> JobRow | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row(row) if row else None

    def list_jobs(self, user: str, limit: int = 100) -> list[JobRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE user = ? ORDER BY seq DESC LIMIT ?", (user, limit)
            ).fetchall()
        return [_row(r) for r in rows]

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {r["state"]: r["n"] for r in rows}

    def claim_next(self) -> JobRow | None:
        """Move the oldest queued job to running and return it."""
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1,"
                " version = version + 1 WHERE id = ? AND state = 'queued'",
                (now(), row["id"]),
            )
        return self.get_job(row["id"])

    def set_progress(self, job_id: str, progress: dict) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET progress = ?, version = version + 1 WHERE id = ? AND state = 'running'",
                (json.dumps(progress), job_id),
            )

    def set_isolation(self, job_id: str, isolation: dict) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET isolation = ? WHERE id = ?", (json.dumps(isolation), job_id))

    def finish(
        self,
        job_id: str,
        state: str,
        result: dict | None = None,
        error: tuple[str, str] | None = None,
    ) -> bool:
        """Record a final state unless the job already has one; return whether this call set it."""
        code, message = error if error else (None, None)
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, result = ?, error_code = ?, error_message = ?,"
                " progress = json_set(progress, '$.stage', 'done'), version = version + 1"
                " WHERE id = ? AND state IN ('queued', 'running', 'awaiting_approval')",
                (state, now(), json.dumps(result) if result else None, code, message, job_id),
            )
        return cur.rowcount == 1

    def requeue(self, job_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL, version = version + 1,"
                " progress = json_set(progress, '$.stage', 'queued', '$.round', 0)"
                " WHERE id = ? AND state = 'running'",
                (job_id,),
            )

    def awaiting_approval(self) -> list[JobRow]:
        """Jobs with notebook code that wait for the data owner's decision, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state = 'awaiting_approval' ORDER BY seq"
            ).fetchall()
        return [_row(r) for r in rows]

    def approve(self, job_id: str, payload_sha256: str) -> bool:
        """Queue an awaiting job, recording the hash of the exact payload the owner approved."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state = 'queued', plan = json_set(plan, '$.approved_sha256', ?),"
                " version = version + 1 WHERE id = ? AND state = 'awaiting_approval'",
                (payload_sha256, job_id),
            )
        return cur.rowcount == 1

    def running_ids(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()
        return [r["id"] for r in rows]


def _load(text: str | None) -> dict | None:
    return json.loads(text) if text else None


def _row(row: sqlite3.Row) -> JobRow:
    return JobRow(
        id=row["id"],
        user=row["user"],
        dataset=row["dataset"],
        kind=row["kind"],
        state=row["state"],
        spec=json.loads(row["spec"]),
        plan=json.loads(row["plan"]),
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        progress=json.loads(row["progress"]),
        isolation=_load(row["isolation"]),
        result=_load(row["result"]),
        error_code=row["error_code"],
        error_message=row["error_message"],
        attempts=row["attempts"],
        version=row["version"],
    )
