"""Federated trainings' sessions on this server: a training's staged rows and margins between its steps.

A training's first step stages its rows in a confined worker; the worker leaves the session (binned rows,
labels, margins, its admission: files only workers read) and this process keeps that folder under the
training's key, the analyst and the training's id, with a fingerprint of what the rows were staged for
(spec, dataset version, features, settings, rho). A step takes its training's session out while it runs
and puts back the one the worker left (or the one it took, when the step failed). Another analyst, or a
step of another fingerprint, finds none, and stages. Bounded: at most PER_ANALYST sessions per analyst
(her oldest used goes first; no cap in all, so that one analyst's sessions never evict another's and
tell her of the other's work), none idle past IDLE_S (checked at each step), and none
survives a restart (the folder is emptied at start): a training whose session is gone is answered
`federated_session_gone` at its next step, at no cost, and its client sends that step again with the
whole model, which stages: that is all a lost session costs.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

PER_ANALYST = 4
IDLE_S = 900.0


@dataclass
class Session:
    folder: Path
    fingerprint: str
    used: float
    digest: str  # of the model so far and the last batch's leaves, the next step's question depends on


class Sessions:
    def __init__(self, root: Path, per_analyst: int = PER_ANALYST, idle_s: float = IDLE_S):
        shutil.rmtree(root, ignore_errors=True)  # a restart drops every session
        root.mkdir(parents=True)
        self.root = root
        self.per_analyst, self.idle_s = per_analyst, idle_s
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], Session] = {}
        self._running: set[tuple[str, str]] = set()  # trainings with a step between `take` and `put`
        self._ended: set[tuple[str, str]] = set()  # of those, the ones ended meanwhile

    def take(self, user: str, training: str, fingerprint: str) -> Session | None:
        """The training's session, out of the table while its step runs; None when there is none for
        this analyst and training, or it was staged for something else (then it is dropped)."""
        with self._lock:
            session = self._held.pop((user, training), None)
            self._running.add((user, training))
            gone = self._expired()
        if session is not None and session.fingerprint != fingerprint:
            gone.append(session)
            session = None
        _remove(gone)
        return session

    def adopt(self, folder: Path) -> Path:
        """Move a session a worker left into this server's sessions, where the next step finds it."""
        kept = self.root / uuid.uuid4().hex
        shutil.move(folder, kept)
        return kept

    def put(
        self,
        user: str,
        training: str,
        fingerprint: str,
        folder: Path | None,
        taken: Session | None,
        digest: str = "",
    ) -> None:
        """After a step: the session it left (`folder`, adopted; `digest` its model so far), else the one
        it took, is the training's (none, when the training was ended while the step ran)."""
        gone = []
        session = None
        if folder is not None:
            session = Session(folder, fingerprint, time.monotonic(), digest)
            if taken is not None:
                gone.append(taken)
        elif taken is not None:
            session = taken
        key = (user, training)
        with self._lock:
            self._running.discard(key)
            ended = key in self._ended
            self._ended.discard(key)
            if session is None:
                return
            replaced = self._held.pop(key, None)  # a step of the same training beside it
            if replaced is not None:
                gone.append(replaced)
            if ended:
                gone.append(session)
            else:
                self._held[key] = session
            gone += self._over(user)
        _remove(gone)

    def drop(self, user: str, training: str) -> bool:
        """End a training's session (its last step is done); False when it had none. A step that holds
        it just now leaves it ended, not kept."""
        with self._lock:
            session = self._held.pop((user, training), None)
            if session is None and (user, training) in self._running:
                self._ended.add((user, training))
            gone = [session] if session is not None else []
            gone += self._expired()
        _remove(gone)
        return session is not None

    def __len__(self) -> int:
        return len(self._held)

    def _expired(self) -> list[Session]:
        now = time.monotonic()
        old = [key for key, s in self._held.items() if now - s.used > self.idle_s]
        return [self._held.pop(key) for key in old]

    def _over(self, user: str) -> list[Session]:
        """The analyst's oldest used sessions past her cap."""
        gone = self._expired()
        mine = sorted((key for key in self._held if key[0] == user), key=lambda key: self._held[key].used)
        for key in mine[: max(0, len(mine) - self.per_analyst)]:
            gone.append(self._held.pop(key))
        return gone


def _remove(sessions: list[Session]) -> None:
    for session in sessions:
        shutil.rmtree(session.folder, ignore_errors=True)
