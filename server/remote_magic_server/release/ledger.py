"""What has been released to whom: admitted row sets, privacy charges and answers, model release states.

The trusted side's memory for the differencing guard and the privacy budget, in its own SQLite file
beside the job store. Row sets are roaring bitmaps of row numbers in the dataset file (compact: a few
bytes per run of rows); identical sets are stored once. Check-then-record happens under one lock
(`decision`), so two jobs admitted together cannot both slip past the guard or the budget. A charge is
one row per job (or describe request) with the noise it drew, so a job that runs again after a restart
is neither charged twice nor given fresh noise; a DP training's noise answers are kept the same way, by
job and by their order (`noise_draws`), written together before anything that depends on them leaves.
A data owner may give one user a budget on one dataset other than the policy's cap (`budget_caps`).
A model's release decision keeps what the release rules read of it (`facts`), for the owner's review.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from pyroaring import BitMap

_SCHEMA = """
CREATE TABLE IF NOT EXISTS row_sets (
    user TEXT NOT NULL, dataset TEXT NOT NULL, source TEXT NOT NULL, role TEXT NOT NULL,
    size INTEGER NOT NULL, bits BLOB NOT NULL, created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS row_sets_by_owner ON row_sets (user, dataset, size);
CREATE TABLE IF NOT EXISTS privacy_spend (
    charge TEXT PRIMARY KEY, user TEXT NOT NULL, dataset TEXT NOT NULL, kind TEXT NOT NULL,
    rho REAL NOT NULL, draws TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS privacy_spend_by_owner ON privacy_spend (user, dataset);
CREATE INDEX IF NOT EXISTS privacy_spend_by_dataset ON privacy_spend (dataset);
CREATE TABLE IF NOT EXISTS budget_caps (
    user TEXT NOT NULL, dataset TEXT NOT NULL, rho_cap REAL NOT NULL, set_by TEXT NOT NULL,
    set_at TEXT NOT NULL, PRIMARY KEY (user, dataset)
);
CREATE TABLE IF NOT EXISTS dp_answers (
    user TEXT NOT NULL, dataset TEXT NOT NULL, request TEXT NOT NULL, answer TEXT NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (user, dataset, request)
);
CREATE TABLE IF NOT EXISTS noise_draws (
    charge TEXT NOT NULL, seq INTEGER NOT NULL, answer TEXT NOT NULL, PRIMARY KEY (charge, seq)
);
CREATE TABLE IF NOT EXISTS model_releases (
    job_id TEXT PRIMARY KEY, user TEXT NOT NULL, dataset TEXT NOT NULL, state TEXT NOT NULL,
    message TEXT NOT NULL, decided_at TEXT NOT NULL, approved_by TEXT, facts TEXT
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Ledger:
    """Thread-safe access to the release ledger; several processes may open the same file."""

    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._lock:
            self._db.executescript(_SCHEMA)
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(model_releases)")}
            if "facts" not in columns:  # a ledger from before the owner's review (`approve --show`)
                self._db.execute("ALTER TABLE model_releases ADD COLUMN facts TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._db.in_transaction:  # within `together`: its commit is this one's
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT too: left open, the transaction would swallow every later one's writes
            # (they see `in_transaction` and commit nothing of their own).
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def together(self) -> Iterator[None]:
        """The block's writes in one transaction: one commit, so one wait for the disk, not one each
        (a synced commit costs 1-4 ms on a shared VM's disk: a DP job's kept noise and its stored result)."""
        with self._lock, self._transaction():
            yield

    @contextmanager
    def decision(self) -> Iterator[Ledger]:
        """Hold the ledger while a release is checked and recorded."""
        with self._lock:
            yield self

    # row sets
    def released_sets(self, user: str, dataset: str) -> list[BitMap]:
        with self._lock:
            rows = self._db.execute(
                "SELECT bits FROM row_sets WHERE user = ? AND dataset = ?", (user, dataset)
            ).fetchall()
        return [BitMap.deserialize(r["bits"]) for r in rows]

    def record_sets(self, user: str, dataset: str, source: str, sets: dict[str, BitMap]) -> None:
        """Remember released sets, in one transaction; a set equal to one already stored is not stored
        again."""
        with self._lock, self._transaction():
            for role, bits in sets.items():
                same_size = self._db.execute(
                    "SELECT bits FROM row_sets WHERE user = ? AND dataset = ? AND size = ?",
                    (user, dataset, len(bits)),
                ).fetchall()
                if any(BitMap.deserialize(r["bits"]) == bits for r in same_size):
                    continue
                self._db.execute(
                    "INSERT INTO row_sets (user, dataset, source, role, size, bits, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (user, dataset, source, role, len(bits), bits.serialize(), _now()),
                )

    # differential privacy
    def spent(self, user: str, dataset: str) -> float:
        """The zCDP budget a user has spent on a dataset."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(rho), 0) AS spent FROM privacy_spend WHERE user = ? AND dataset = ?",
                (user, dataset),
            ).fetchone()
        return float(row["spent"])

    def spent_by_all(self, dataset: str) -> float:
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(rho), 0) AS spent FROM privacy_spend WHERE dataset = ?", (dataset,)
            ).fetchone()
        return float(row["spent"])

    def charges(self, user: str | None = None, dataset: str | None = None) -> list[dict]:
        """Every charge, oldest first, of one user and/or one dataset (all when not given)."""
        where = " AND ".join(f"{name} = ?" for name, v in (("user", user), ("dataset", dataset)) if v)
        params = tuple(v for v in (user, dataset) if v)
        with self._lock:
            rows = self._db.execute(
                "SELECT charge, user, dataset, kind, rho, created_at FROM privacy_spend"
                + (f" WHERE {where}" if where else "")
                + " ORDER BY created_at, charge",
                params,
            ).fetchall()
        return [dict(row) for row in rows]

    def rho_of(self, charge: str) -> float | None:
        """What one charge cost; None if it was never charged."""
        with self._lock:
            row = self._db.execute("SELECT rho FROM privacy_spend WHERE charge = ?", (charge,)).fetchone()
        return None if row is None else float(row["rho"])

    def cap(self, user: str, dataset: str) -> float | None:
        """The budget the data owner set for this user on this dataset; None: the policy's cap."""
        with self._lock:
            row = self._db.execute(
                "SELECT rho_cap FROM budget_caps WHERE user = ? AND dataset = ?", (user, dataset)
            ).fetchone()
        return None if row is None else float(row["rho_cap"])

    def caps(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM budget_caps ORDER BY user, dataset").fetchall()
        return [dict(row) for row in rows]

    def set_cap(self, user: str, dataset: str, rho_cap: float, set_by: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO budget_caps (user, dataset, rho_cap, set_by, set_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (user, dataset, rho_cap, set_by, _now()),
            )

    def charged(self, charge: str) -> dict | None:
        """An earlier charge (its noise draws) of the same job, if it was admitted before."""
        with self._lock:
            row = self._db.execute("SELECT draws FROM privacy_spend WHERE charge = ?", (charge,)).fetchone()
        return json.loads(row["draws"]) if row else None

    def charge(self, charge: str, user: str, dataset: str, kind: str, rho: float, draws: dict) -> None:
        """Record a charge and the noise it drew (once per charge key)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO privacy_spend (charge, user, dataset, kind, rho, draws, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (charge, user, dataset, kind, rho, json.dumps(draws), _now()),
            )

    def noise_draws(self, charge: str) -> dict[int, dict]:
        """The noise answers an earlier run of the same job was given, by their order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, answer FROM noise_draws WHERE charge = ?", (charge,)
            ).fetchall()
        return {int(row["seq"]): json.loads(row["answer"]) for row in rows}

    def store_noise_draws(self, charge: str, draws: list[tuple[int, str]]) -> None:
        """Keep a job's noise answers (each as its JSON text), all in one transaction (one commit, not
        one per answer)."""
        if not draws:
            return
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO noise_draws (charge, seq, answer) VALUES (?, ?, ?)",
                [(charge, seq, answer) for seq, answer in draws],
            )

    def stored_answer(self, user: str, dataset: str, request: str) -> dict | None:
        text = self.stored_answer_json(user, dataset, request)
        return json.loads(text) if text is not None else None

    def stored_answer_json(self, user: str, dataset: str, request: str) -> str | None:
        """A stored answer as its JSON text (for a caller that validates it straight from the text)."""
        with self._lock:
            row = self._db.execute(
                "SELECT answer FROM dp_answers WHERE user = ? AND dataset = ? AND request = ?",
                (user, dataset, request),
            ).fetchone()
        return row["answer"] if row else None

    def answers(self, user: str, dataset: str) -> list[dict]:
        """Every answer already released to a user on a dataset, newest first (they cost nothing to read
        again: what they say is the user's already)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT answer FROM dp_answers WHERE user = ? AND dataset = ? ORDER BY created_at DESC",
                (user, dataset),
            ).fetchall()
        return [json.loads(row["answer"]) for row in rows]

    def store_answer(self, user: str, dataset: str, request: str, answer: dict) -> None:
        """File an answer already paid for under a request key, so an identical request repeats it."""
        self.store_answer_json(user, dataset, request, json.dumps(answer))

    def store_answer_json(self, user: str, dataset: str, request: str, text: str) -> None:
        """`store_answer` of an answer already written as JSON text (a sketch's: not written twice)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO dp_answers (user, dataset, request, answer, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (user, dataset, request, text, _now()),
            )

    # model release
    def set_model_state(
        self, job_id: str, user: str, dataset: str, state: str, message: str, facts: dict | None = None
    ) -> None:
        """Record the release rules' decision on a job's model, with what they read of it (`facts`)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO model_releases (job_id, user, dataset, state, message, decided_at,"
                " facts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, user, dataset, state, message, _now(), json.dumps(facts) if facts else None),
            )

    def kept_models(self, dataset: str) -> list[str]:
        """Jobs whose trained model awaits approval or is approved: their dataset version stays."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id FROM model_releases WHERE dataset = ? AND state IN ('awaiting_approval', "
                "'approved')",
                (dataset,),
            ).fetchall()
        return [row[0] for row in rows]

    def model_state(self, job_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM model_releases WHERE job_id = ?", (job_id,)).fetchone()
        return _decision(row) if row else None

    def models_awaiting(self) -> list[dict]:
        """The models that passed the release rules and wait for the data owner, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM model_releases WHERE state = 'awaiting_approval' ORDER BY decided_at"
            ).fetchall()
        return [_decision(row) for row in rows]

    def approve_model(self, job_id: str, approver: str) -> bool:
        """Approve a model awaiting approval; return whether one was."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE model_releases SET state = 'approved', approved_by = ?, decided_at = ?"
                " WHERE job_id = ? AND state = 'awaiting_approval'",
                (approver, _now(), job_id),
            )
        return cur.rowcount == 1


def _decision(row: sqlite3.Row) -> dict:
    decided = dict(row)
    decided["facts"] = json.loads(decided["facts"]) if decided["facts"] else None
    return decided
