"""The job store: SQLite (WAL) for jobs and tokens, one folder per job for its payload and outputs.

Every transition is committed (synchronous=FULL) before it is acknowledged, so a restart, even after a
power loss, finds each job where it was; only progress lines and the claim that a synced write follows at
once skip their own fsync. Writes go through one connection under a lock; reads use a connection per
thread, so a status poll never waits behind a write (sqlitedb.py). The schema carries a version;
`_MIGRATIONS` brings an older store up to date in one transaction.
Tokens are stored as SHA-256 hashes: they are 256-bit random strings, so a plain hash is enough and a
leaked database does not leak a usable token. A token also has a public id (for list, revoke, rotate),
an optional expiry and note, and is looked up on every request, so a revoked or expired one fails at
once. The store also anchors the audit log's head (`audit_head`, written by audit.py).

Why it is long: every SQL statement about jobs and tokens lives here and nowhere else, so the store's
transactions and its schema migrations can be read together.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from remote_magic.families import MODEL_FILE, PARAMS_FILE

from ..plan import JobPlan
from ..sqlitedb import Database, StoreError, now

__all__ = ["SCHEMA_VERSION", "JobRow", "QueueFull", "Store", "StoreError", "hash_token", "now"]

SCHEMA_VERSION = 4
MODEL_FILES = (MODEL_FILE, PARAMS_FILE, "model.pkl")  # what a job's folder keeps of its trained model
TOKEN_PREFIX = "rm_"  # noqa: S105 - tells our tokens from JupyterHub's without a lookup
DATASETS_SCOPE = "datasets"  # an analyst's token: the API, on the datasets it grants
METRICS_SCOPE = "metrics"  # a scraper's token: GET /metrics and nothing else

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

# Version N's statements turn a version N-1 store into a version N store. `_SCHEMA` above is version 1
# and is never edited again: every later change is a new entry here, so old stores and new ones converge.
_MIGRATIONS: dict[int, str] = {
    2: """
    ALTER TABLE jobs ADD COLUMN worker_pid INTEGER;
    ALTER TABLE jobs ADD COLUMN worker_started TEXT;
    """,
    3: """
    ALTER TABLE tokens ADD COLUMN id TEXT;
    UPDATE tokens SET id = lower(hex(randomblob(6)));
    CREATE UNIQUE INDEX tokens_by_id ON tokens (id);
    ALTER TABLE tokens ADD COLUMN note TEXT NOT NULL DEFAULT '';
    ALTER TABLE tokens ADD COLUMN expires_at TEXT;
    ALTER TABLE tokens ADD COLUMN revoked_at TEXT;
    ALTER TABLE tokens ADD COLUMN last_used_at TEXT;
    CREATE TABLE audit_head (
        one INTEGER PRIMARY KEY CHECK (one = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL
    );
    """,
    4: """
    ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'datasets';
    """,
}


class QueueFull(Exception):
    """The user already has as many queued jobs as the server accepts."""

    def __init__(self, queued: int):
        super().__init__(f"{queued} jobs queued")
        self.queued = queued


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRow:
    """A token's public record: everything but its secret."""

    id: str
    user: str
    datasets: list[str]
    note: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None
    scope: str = DATASETS_SCOPE

    def state(self, at: datetime | None = None) -> str:
        """'active', 'revoked' or 'expired' at `at` (default: now)."""
        if self.revoked_at is not None:
            return "revoked"
        at = at or datetime.now(timezone.utc)
        if self.expires_at is not None and datetime.fromisoformat(self.expires_at) <= at:
            return "expired"
        return "active"


@dataclass
class JobRow:
    id: str
    user: str
    dataset: str
    kind: str
    state: str
    spec: dict
    plan: JobPlan
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
        self.db_path = db_path
        self.jobs_dir = jobs_dir
        jobs_dir.mkdir(parents=True, exist_ok=True)
        self._database = Database(db_path, _SCHEMA, _MIGRATIONS, SCHEMA_VERSION)
        # Single statements autocommit on the writer connection, under its lock.
        self._db = self._database.writer
        self._lock = self._database.lock
        with self._lock:
            self._served = self._last_served()
            self._turn = len(self._served)

    @contextmanager
    def _unsynced(self) -> Iterator[None]:
        """Writes that need no fsync of their own: progress and isolation (a crash only loses a fresh
        progress line, which a restart resets anyway), and a claim (the worker's record right after it
        is synced, and syncs the claim with it). Call with the lock held."""
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def schema_version(self) -> int:
        return self._database.schema_version()

    def _read(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        return self._database.read(sql, params)

    def close(self) -> None:
        self._database.close()

    def ping(self) -> bool:
        """Whether the database answers a read (health)."""
        try:
            self.schema_version()
            return True
        except (sqlite3.Error, TypeError):
            return False

    # tokens
    def issue_token(self, user: str, datasets: list[str]) -> str:
        """A token that never expires; return its secret (the demo and tests use this)."""
        return self.create_token(user, datasets)[1]

    def create_token(
        self,
        user: str,
        datasets: list[str],
        expires_at: str | None = None,
        note: str = "",
        scope: str = DATASETS_SCOPE,
    ) -> tuple[TokenRow, str]:
        """Store a new token; return its record and its secret, which is never stored."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = secrets.token_hex(6)
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens (token_hash, id, user, datasets, note, created_at, expires_at, scope)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (hash_token(secret), token_id, user, _names(datasets), note, now(), expires_at, scope),
            )
        row = self.get_token(token_id)
        assert row is not None
        return row, secret

    def lookup_token(self, token: str) -> TokenRow | None:
        """The record of the token with this secret, whatever its state (the caller decides)."""
        row = self._read("SELECT * FROM tokens WHERE token_hash = ?", (hash_token(token),)).fetchone()
        return _token(row) if row else None

    def get_token(self, token_id: str) -> TokenRow | None:
        row = self._read("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return _token(row) if row else None

    def list_tokens(self, user: str | None = None) -> list[TokenRow]:
        rows = self._read(
            "SELECT * FROM tokens WHERE ? IS NULL OR user = ? ORDER BY created_at, id", (user, user)
        ).fetchall()
        return [_token(r) for r in rows]

    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token for good; return whether it was not revoked already."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now(), token_id)
            )
        return cur.rowcount == 1

    def rotate_token(self, token_id: str, expires_at: str | None = None) -> str | None:
        """Give a token that is not revoked a new secret (the old one stops working at once), keeping
        its id, user, datasets and note; a new expiry if given. Return the new secret, or None."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            cur = self._db.execute(
                "UPDATE tokens SET token_hash = ?, expires_at = coalesce(?, expires_at)"
                " WHERE id = ? AND revoked_at IS NULL",
                (hash_token(secret), expires_at, token_id),
            )
        return secret if cur.rowcount == 1 else None

    def mark_token_used(self, token_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now(), token_id))

    # jobs
    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def copy_model(self, source: str, target: str) -> None:
        """Give job `target` the trained model files job `source` still has (hard links where the disk
        allows): a repeat answered from an earlier job's result is that job's model too, so it can be
        downloaded and registered like any other."""
        folder = self.job_dir(target)
        folder.mkdir(parents=True, exist_ok=True)
        for name in MODEL_FILES:
            found = self.job_dir(source) / name
            # A regular file only, never what a link in the folder points at.
            if found.is_symlink() or not found.is_file() or (folder / name).exists():
                continue
            try:
                os.link(found, folder / name, follow_symlinks=False)
            except OSError:
                shutil.copyfile(found, folder / name, follow_symlinks=False)

    def create_job(
        self,
        user: str,
        dataset: str,
        kind: str,
        spec: dict,
        plan: JobPlan,
        payload: bytes,
        idempotency_key: str | None,
        state: str = "queued",
        max_queued: int | None = None,
    ) -> tuple[JobRow, bool]:
        """Persist the payload and the job; return (job, created). An existing key returns its job.

        `plan` holds what the intake resolved from the spec (features, filter columns) and decided, so
        the scheduler never needs to look at the catalog. With `max_queued`, a user who already has that
        many queued jobs gets QueueFull (a repeated key still returns its job). The payload is on disk
        (fsynced) before the row is committed, and removed again if the row is not written."""
        if idempotency_key is not None:
            existing = self.job_by_key(user, idempotency_key)
            if existing is not None:
                return existing, False
        if max_queued is not None:
            self._check_queue(user, max_queued)
        job_id = uuid.uuid4().hex[:16]
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True)
        try:
            _write_durably(folder / "model.pkl", payload)
            job = self._insert(job_id, user, dataset, kind, state, spec, plan, idempotency_key, max_queued)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if job.id != job_id:
            shutil.rmtree(folder, ignore_errors=True)
            return job, False
        return job, True

    def _check_queue(self, user: str, max_queued: int) -> None:
        queued = self.count_queued(user)
        if queued >= max_queued:
            raise QueueFull(queued)

    def count_queued(self, user: str) -> int:
        row = self._read(
            "SELECT COUNT(*) AS n FROM jobs WHERE user = ? AND state = 'queued'", (user,)
        ).fetchone()
        return int(row["n"])

    def _insert(
        self,
        job_id: str,
        user: str,
        dataset: str,
        kind: str,
        state: str,
        spec: dict,
        plan: JobPlan,
        idempotency_key: str | None,
        max_queued: int | None,
    ) -> JobRow:
        """Insert the job row; on a racing insert of the same key, return the winner's job instead."""
        progress = json.dumps({"stage": "queued", "round": 0, "total_rounds": 0, "metric": None})
        with self._lock:
            if max_queued is not None:
                self._check_queue(user, max_queued)
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
                        plan.stored(),
                        idempotency_key,
                        now(),
                        progress,
                    ),
                )
            except sqlite3.IntegrityError:
                existing = self.job_by_key(user, idempotency_key or "")
                if existing is None:
                    raise
                return existing
        job = self.get_job(job_id)
        assert job is not None
        return job

    def job_by_key(self, user: str, key: str) -> JobRow | None:
        """The user's job submitted with this idempotency key, if any."""
        row = self._read("SELECT * FROM jobs WHERE user = ? AND idempotency_key = ?", (user, key)).fetchone()
        return _row(row) if row else None

    def get_job(self, job_id: str) -> JobRow | None:
        row = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row(row) if row else None

    def peek(self, job_id: str) -> tuple[str, str, int] | None:
        """A job's user, state and version, without reading the rest of its row: what a long-poll
        checks at each wake-up (a job's every progress line wakes it)."""
        row = self._read("SELECT user, state, version FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return (row["user"], row["state"], row["version"]) if row else None

    def list_jobs(self, user: str, limit: int = 100, state: str | None = None) -> list[JobRow]:
        if state is None:
            sql, params = "SELECT * FROM jobs WHERE user = ? ORDER BY seq DESC LIMIT ?", (user, limit)
        else:
            sql = "SELECT * FROM jobs WHERE user = ? AND state = ? ORDER BY seq DESC LIMIT ?"
            params = (user, state, limit)
        return [_row(r) for r in self._read(sql, params).fetchall()]

    def count_by_state(self) -> dict[str, int]:
        rows = self._read("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {r["state"]: r["n"] for r in rows}

    def _last_served(self) -> dict[str, int]:
        """Users in the order their jobs last started (most recent last), so fairness survives a restart."""
        rows = self._db.execute(
            "SELECT user, MAX(started_at) AS last FROM jobs WHERE started_at IS NOT NULL"
            " GROUP BY user ORDER BY last"
        ).fetchall()
        return {r["user"]: rank for rank, r in enumerate(rows, start=1)}

    def claim_next(self) -> JobRow | None:
        """Move the next queued job to running and return it: the oldest queued job of the user who was
        served least recently (a user never served comes first). Users take turns, so one user's sweep
        of many jobs never makes another user's single job wait behind all of it."""
        with self._lock:
            heads = self._db.execute(
                "SELECT user, MIN(seq) AS seq FROM jobs WHERE state = 'queued' GROUP BY user"
            ).fetchall()
            if not heads:
                return None
            head = min(heads, key=lambda r: (self._served.get(r["user"], 0), r["seq"]))
            row = self._db.execute("SELECT id FROM jobs WHERE seq = ?", (head["seq"],)).fetchone()
            with self._unsynced():
                self._db.execute(
                    "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1,"
                    " version = version + 1 WHERE id = ? AND state = 'queued'",
                    (now(), row["id"]),
                )
            self._turn += 1
            self._served[head["user"]] = self._turn
        return self.get_job(row["id"])

    def set_progress(self, job_id: str, progress: dict) -> None:
        with self._lock, self._unsynced():
            self._db.execute(
                "UPDATE jobs SET progress = ?, version = version + 1 WHERE id = ? AND state = 'running'",
                (json.dumps(progress), job_id),
            )

    def set_isolation(self, job_id: str, isolation: dict) -> None:
        with self._lock, self._unsynced():
            self._db.execute("UPDATE jobs SET isolation = ? WHERE id = ?", (json.dumps(isolation), job_id))

    def set_worker(self, job_id: str, pid: int, started: str | None) -> None:
        """Record the worker process of a running job, so a restart can find it if it outlived us."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET worker_pid = ?, worker_started = ? WHERE id = ? AND state = 'running'",
                (pid, started, job_id),
            )

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

    def requeue(self, job_id: str, refund: bool = False) -> bool:
        """Put a running job back in the queue; `refund` gives back the attempt (it was not the job's
        fault, e.g. a graceful shutdown). Return whether the job was still running."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL, version = version + 1,"
                " attempts = attempts - ?, worker_pid = NULL, worker_started = NULL,"
                " progress = json_set(progress, '$.stage', 'queued', '$.round', 0)"
                " WHERE id = ? AND state = 'running'",
                (1 if refund else 0, job_id),
            )
        return cur.rowcount == 1

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

    def final_jobs(self, before: str | None = None, since: str | None = None) -> list[str]:
        """Ids of finished jobs, oldest finish first, finished before and/or since the given times."""
        rows = self._read(
            "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')"
            " AND finished_at < COALESCE(?, '9999') AND finished_at >= COALESCE(?, '') ORDER BY finished_at",
            (before, since),
        ).fetchall()
        return [r["id"] for r in rows]

    def datasets_of(self, user: str) -> list[str]:
        """Every dataset an active token of `user` grants (what a recipe of theirs may use)."""
        return sorted({name for t in self.list_tokens(user) if t.state() == "active" for name in t.datasets})

    def dataset_versions_in_use(self, dataset: str, job_ids: Iterable[str] = ()) -> set[int]:
        """Dataset versions that unfinished jobs, or the jobs named (kept models), refer to: never pruned."""
        ids = list(job_ids)
        marks = ", ".join("?" * len(ids)) or "NULL"
        rows = self._read(
            "SELECT DISTINCT json_extract(plan, '$.dataset_version') FROM jobs WHERE dataset = ? AND "
            f"(state IN ('queued', 'running', 'awaiting_approval') OR id IN ({marks}))",
            (dataset, *ids),
        ).fetchall()
        return {row[0] for row in rows if row[0] is not None}

    def running_ids(self) -> list[str]:
        rows = self._read("SELECT id FROM jobs WHERE state = 'running'").fetchall()
        return [r["id"] for r in rows]

    def running_workers(self) -> list[tuple[str, int, str | None]]:
        """(job id, worker pid, worker start mark) of the running jobs that recorded a worker."""
        rows = self._read(
            "SELECT id, worker_pid, worker_started FROM jobs"
            " WHERE state = 'running' AND worker_pid IS NOT NULL"
        ).fetchall()
        return [(r["id"], r["worker_pid"], r["worker_started"]) for r in rows]

    def forget_workers(self) -> None:
        """Forget the worker processes recorded for running jobs: after a restore they belong to the
        server that was copied, so recovery must re-queue those jobs without signalling the pids."""
        with self._lock:
            self._db.execute("UPDATE jobs SET worker_pid = NULL, worker_started = NULL")

    def remove_stray_folders(self) -> list[str]:
        """Delete job folders without a job row (a crash between writing the payload and the row)."""
        known = {r["id"] for r in self._read("SELECT id FROM jobs").fetchall()}
        stray = [p for p in self.jobs_dir.iterdir() if p.is_dir() and p.name not in known]
        for folder in stray:
            shutil.rmtree(folder, ignore_errors=True)
        return [p.name for p in stray]


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _load(text: str | None) -> dict | None:
    return json.loads(text) if text else None


def _names(datasets: list[str]) -> str:
    return json.dumps(sorted(set(datasets)))


def _token(row: sqlite3.Row) -> TokenRow:
    return TokenRow(
        id=row["id"],
        user=row["user"],
        datasets=json.loads(row["datasets"]),
        note=row["note"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
        scope=row["scope"],
    )


def _row(row: sqlite3.Row) -> JobRow:
    return JobRow(
        id=row["id"],
        user=row["user"],
        dataset=row["dataset"],
        kind=row["kind"],
        state=row["state"],
        spec=json.loads(row["spec"]),
        plan=JobPlan.model_validate_json(row["plan"]),
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
