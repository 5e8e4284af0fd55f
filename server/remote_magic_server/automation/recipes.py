"""Recipes as stored: a saved spec, model and triggers per owner and name, and the record of each fire.

A fire is recorded under a key that names what caused it (`data:<version>`, `model:<mark>`,
`every:<period>`), unique per recipe, in the same transaction that moves the recipe's marks of what it
has seen; its job is created afterwards with an idempotency key derived from the fire. So a trigger
that fires while the server goes down, or fires again after a restart, makes one job, never two.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from remote_magic.contract.automation_wire import Recipe, RecipeIn
from remote_magic.contract.codes import Refusal

from ..sqlitedb import Database, now

MAX_PER_USER = 50


@dataclass(frozen=True)
class Stored:
    owner: str
    recipe: Recipe
    payload: bytes
    seen: dict


@dataclass(frozen=True)
class Fire:
    seq: int
    owner: str
    recipe: str
    key: str
    trigger: str


class Recipes:
    def __init__(self, db: Database):
        self.db = db

    def save(self, owner: str, recipe: RecipeIn, payload: bytes, seen: dict) -> Recipe:
        """Create or replace a recipe (active again, marks of what it has seen reset to now)."""
        exists = self.get(owner, recipe.name, missing_ok=True) is not None
        if not exists and len(self.list(owner)) >= MAX_PER_USER:
            raise Refusal("bad_request", f"you already have {MAX_PER_USER} recipes; delete one first")
        with self.db.write() as db:
            db.execute(
                "INSERT INTO recipes (owner, name, body, payload, state, paused_reason, seen, created)"
                " VALUES (?, ?, ?, ?, 'active', NULL, ?, ?) ON CONFLICT (owner, name) DO UPDATE SET"
                " body = excluded.body, payload = excluded.payload, state = 'active', paused_reason = NULL,"
                " seen = excluded.seen",
                (owner, recipe.name, recipe.model_dump_json(), payload, json.dumps(seen), now()),
            )
        return self.get(owner, recipe.name).recipe  # type: ignore[union-attr]

    def _stored(self, row) -> Stored:
        runs = self.db.read(
            "SELECT COUNT(job_id) AS n, MAX(seq) AS last FROM fires WHERE owner = ? AND recipe = ?"
            " AND job_id IS NOT NULL AND job_id != ''",
            (row["owner"], row["name"]),
        ).fetchone()
        last = None
        if runs["last"] is not None:
            last = self.db.read("SELECT job_id FROM fires WHERE seq = ?", (runs["last"],)).fetchone()[
                "job_id"
            ]
        recipe = Recipe(
            **json.loads(row["body"]),
            state=row["state"],
            paused_reason=row["paused_reason"],
            created=row["created"],
            runs=runs["n"],
            last_job=last,
        )
        return Stored(row["owner"], recipe, bytes(row["payload"]), json.loads(row["seen"]))

    def get(self, owner: str, name: str, missing_ok: bool = False) -> Stored | None:
        row = self.db.read("SELECT * FROM recipes WHERE owner = ? AND name = ?", (owner, name)).fetchone()
        if row is None:
            if missing_ok:
                return None
            raise Refusal("not_found", f"no recipe named {name!r}")
        return self._stored(row)

    def list(self, owner: str) -> list[Recipe]:
        rows = self.db.read("SELECT * FROM recipes WHERE owner = ? ORDER BY name", (owner,)).fetchall()
        return [self._stored(r).recipe for r in rows]

    def active(self) -> list[Stored]:
        rows = self.db.read("SELECT * FROM recipes WHERE state = 'active' ORDER BY owner, name").fetchall()
        return [self._stored(r) for r in rows]

    def set_state(self, owner: str, name: str, state: str, reason: str | None = None) -> bool:
        """Pause or resume; True when the state changed."""
        self.get(owner, name)
        with self.db.write() as db:
            cur = db.execute(
                "UPDATE recipes SET state = ?, paused_reason = ? WHERE owner = ? AND name = ? AND state != ?",
                (state, reason, owner, name, state),
            )
        return cur.rowcount == 1

    def delete(self, owner: str, name: str) -> None:
        self.get(owner, name)
        with self.db.write() as db:
            db.execute("DELETE FROM recipes WHERE owner = ? AND name = ?", (owner, name))

    def fire(self, owner: str, name: str, key: str, trigger: str, seen: dict) -> Fire | None:
        """Record a fire and the new marks at once; None when this key already fired."""
        with self.db.write() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO fires (owner, recipe, key, trigger, fired_at) VALUES (?, ?, ?, ?, ?)",
                (owner, name, key, trigger, now()),
            )
            db.execute(
                "UPDATE recipes SET seen = ? WHERE owner = ? AND name = ?", (json.dumps(seen), owner, name)
            )
            if cur.rowcount == 0:
                return None
            seq = cur.lastrowid
        return Fire(seq, owner, name, key, trigger)  # type: ignore[arg-type]

    def unstarted(self) -> list[Fire]:
        """Fires whose job was not created yet (the server stopped in between, or the queue was full)."""
        rows = self.db.read("SELECT * FROM fires WHERE job_id IS NULL ORDER BY seq").fetchall()
        return [Fire(r["seq"], r["owner"], r["recipe"], r["key"], r["trigger"]) for r in rows]

    def started(self, fire: Fire, job_id: str, outcome: str = "started") -> None:
        """The fire's job exists (`job_id`), or it will never be made ('' with the reason)."""
        with self.db.write() as db:
            db.execute("UPDATE fires SET job_id = ?, outcome = ? WHERE seq = ?", (job_id, outcome, fire.seq))
