"""The persisted outbox: events, and one delivery per event and target, retried with exponential backoff.

`publish` records an event under a stable key and, in the same transaction, a delivery for each webhook
that subscribed to its type and whose owner may see it (plus one MLflow export where that is on). A key
already published is ignored, so a hand-over repeated after a crash queues nothing twice. A delivery has
one id for all its attempts; once it is delivered it is never sent again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from remote_magic.contract.automation_wire import Delivery

from ..sqlitedb import Database, now

MLFLOW_EVENTS = frozenset({"job.succeeded", "model.registered", "alias.moved"})
MAX_ERROR = 200


@dataclass(frozen=True)
class Event:
    """Something happened; `audience` says who may hear of it: ("user", U), ("model", M) or ("dataset", D)."""

    type: str
    key: str
    data: dict
    audience: tuple[str, str]


@dataclass(frozen=True)
class Due:
    id: str
    target: str
    webhook_id: str | None
    attempts: int
    event_type: str
    event_created: str
    data: dict


def _at(seconds_from_now: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now)).isoformat(
        timespec="milliseconds"
    )


class Outbox:
    def __init__(self, db: Database, mlflow: bool):
        self.db = db
        self.mlflow = mlflow

    def publish(self, event: Event, may_see: Callable[[str, tuple[str, str]], bool]) -> int:
        """Record the event and its deliveries once; return how many deliveries were queued."""
        hooks = self.db.read("SELECT id, owner, events FROM webhooks WHERE deleted IS NULL").fetchall()
        targets = [
            ("webhook", h["id"])
            for h in hooks
            if event.type in json.loads(h["events"]) and may_see(h["owner"], event.audience)
        ]
        if self.mlflow and event.type in MLFLOW_EVENTS:
            targets.append(("mlflow", None))
        created = now()
        with self.db.write() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO events (key, type, data, created) VALUES (?, ?, ?, ?)",
                (event.key, event.type, json.dumps(event.data), created),
            )
            if cur.rowcount == 0:
                return 0
            for target, webhook_id in targets:
                db.execute(
                    "INSERT INTO deliveries (id, event_key, target, webhook_id, state, next_attempt_at,"
                    " created)"
                    " VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                    (f"dlv_{uuid.uuid4().hex}", event.key, target, webhook_id, created, created),
                )
        return len(targets)

    def due(self, target: str, limit: int = 20) -> list[Due]:
        rows = self.db.read(
            "SELECT d.id, d.target, d.webhook_id, d.attempts, e.type, e.created, e.data FROM deliveries d"
            " JOIN events e ON e.key = d.event_key WHERE d.state = 'pending' AND d.target = ?"
            " AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at LIMIT ?",
            (target, now(), limit),
        ).fetchall()
        return [
            Due(
                r["id"],
                r["target"],
                r["webhook_id"],
                r["attempts"],
                r["type"],
                r["created"],
                json.loads(r["data"]),
            )
            for r in rows
        ]

    def next_due_in(self, target: str) -> float | None:
        """Seconds until the next pending delivery of `target` is due (0 if one is due now)."""
        row = self.db.read(
            "SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE state = 'pending' AND target = ?",
            (target,),
        ).fetchone()
        if row is None or row["t"] is None:
            return None
        return max(0.0, (datetime.fromisoformat(row["t"]) - datetime.now(timezone.utc)).total_seconds())

    def delivered(self, delivery_id: str, status: int | None) -> None:
        with self.db.write() as db:
            db.execute(
                "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, last_status = ?,"
                " last_error = NULL, delivered_at = ? WHERE id = ? AND state = 'pending'",
                (status, now(), delivery_id),
            )

    def failed_attempt(
        self, delivery_id: str, status: int | None, error: str, retry_in: float | None
    ) -> None:
        """One attempt failed; try again in `retry_in` seconds, or give up (None)."""
        with self.db.write() as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_status = ?, last_error = ?,"
                " state = ?, next_attempt_at = ? WHERE id = ? AND state = 'pending'",
                (
                    status,
                    error[:MAX_ERROR],
                    "pending" if retry_in is not None else "failed",
                    _at(retry_in or 0),
                    delivery_id,
                ),
            )

    def deliveries(self, webhook_id: str, limit: int = 100) -> list[Delivery]:
        rows = self.db.read(
            "SELECT d.*, e.type FROM deliveries d JOIN events e ON e.key = d.event_key"
            " WHERE d.webhook_id = ? ORDER BY d.created DESC LIMIT ?",
            (webhook_id, limit),
        ).fetchall()
        return [
            Delivery(
                id=r["id"],
                webhook_id=r["webhook_id"],
                event=r["type"],
                state=r["state"],
                attempts=r["attempts"],
                last_status=r["last_status"],
                last_error=r["last_error"],
                created=r["created"],
                next_attempt_at=r["next_attempt_at"] if r["state"] == "pending" else None,
                delivered_at=r["delivered_at"],
            )
            for r in rows
        ]

    def pending(self, target: str) -> int:
        row = self.db.read(
            "SELECT COUNT(*) AS n FROM deliveries WHERE state = 'pending' AND target = ?", (target,)
        ).fetchone()
        return int(row["n"])
