"""Federated trainings' sessions on this server: a training's staged rows and margins between its steps.

A training's first step stages its rows in a confined worker; the worker leaves the session (binned rows,
labels, margins: files only workers read) and this process keeps that folder under the training's key,
the analyst and the training's id, with a fingerprint of what the rows were staged for (spec, dataset
version, features, settings, rho) and the desk's record of the rows' admission, which each later step
is charged as. A step takes its training's session out while it runs and puts back the one the worker
left (or the one it took, when the step failed). Another analyst, or a step of another fingerprint,
finds none, and stages. Bounded: at most PER_ANALYST sessions per analyst (her oldest used goes first;
no cap in all, so that one analyst's sessions never evict another's and tell her of the other's work),
none idle past IDLE_S (the server's `sweep` drops them every SWEEP_S, whether or not any request comes),
and none survives a restart (the folder is emptied at start): a training whose session is gone is
answered `federated_session_gone` at its next step, at no cost, and its client sends that step again
with the whole model, which stages: that is all a lost session costs. A session that cannot be kept (a
full disk) is lost the same way, after its step's answer was released.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..protocol import Admission

PER_ANALYST = 4
IDLE_S = 900.0
SWEEP_S = 60.0

log = logging.getLogger("remote_magic_server.scheduler")


@dataclass
class Session:
    """A training's staged rows and margins here (`folder`), and what its next step's question depends on."""

    folder: Path
    fingerprint: str  # what the rows were staged for
    digest: str = ""  # the model so far and the batch the session ends at
    asked: str = ""  # the model so far of the step that left it, whose question a step asked again is
    before: str | None = None  # the session digest that step continued (None: it sent the whole model)
    admission: Admission | None = None  # the rows' admission at the first step, as the desk admitted it
    used: float = 0.0


class Sessions:
    def __init__(
        self,
        root: Path,
        per_analyst: int = PER_ANALYST,
        idle_s: float = IDLE_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        shutil.rmtree(root, ignore_errors=True)  # a restart drops every session
        root.mkdir(parents=True)
        self.root = root
        self.per_analyst, self.idle_s, self.clock = per_analyst, idle_s, clock
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], Session] = {}
        self._running: set[tuple[str, str]] = set()  # trainings with a step between `take` and `put`
        self._ended: set[tuple[str, str]] = set()  # of those, the ones ended meanwhile

    def take(self, user: str, training: str, fingerprint: str, *alike: str) -> Session | None:
        """The training's session, out of the table while its step runs; None when there is none for
        this analyst and training, or it was staged for something else than `fingerprint` (or one of
        `alike`; then it is dropped)."""
        with self._lock:
            session = self._held.pop((user, training), None)
            self._running.add((user, training))
            gone = self._expired()
        if session is not None and session.fingerprint not in (fingerprint, *alike):
            gone.append(session)
            session = None
        _remove(gone)
        return session

    def adopt(self, folder: Path) -> Path | None:
        """Move a session a worker left into this server's sessions, where the next step finds it; None
        when it cannot be moved (a full disk): its step's answer is released all the same, and the
        training's next step here is answered `federated_session_gone` and sent again with the model."""
        kept = self.root / uuid.uuid4().hex
        try:
            shutil.move(folder, kept)
        except OSError as error:
            log.warning("federated_session_not_kept", extra={"error": type(error).__name__})
            shutil.rmtree(kept, ignore_errors=True)
            return None
        return kept

    def put(
        self, user: str, training: str, left: Session | None, taken: Session | None, moved_on: bool = False
    ) -> None:
        """After a step: the session it left (`left`, adopted), else the one it took, is the training's;
        none when the training was ended while the step ran, or when the step succeeded (`moved_on`) and
        left none (the one it took is behind the model so far)."""
        gone = []
        session = left
        if left is not None:
            left.used = self.clock()
        if taken is not None and (left is not None or moved_on):
            gone.append(taken)
        elif taken is not None:
            session = taken
        key = (user, training)
        with self._lock:
            self._running.discard(key)
            ended = key in self._ended
            self._ended.discard(key)
            if session is not None:
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

    def expire(self) -> int:
        """Drop the sessions idle past `idle_s` now; how many."""
        with self._lock:
            gone = self._expired()
        _remove(gone)
        return len(gone)

    async def sweep(self, every_s: float = SWEEP_S) -> None:
        """Expire idle sessions every `every_s` for as long as the server runs (its lifespan's task): a
        training an analyst walked away from goes with no further request from anyone."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await asyncio.to_thread(self.expire)
            except Exception:  # noqa: BLE001 - the next sweep tries again; the server goes on
                log.exception("the sweep of idle federated sessions failed")

    def __len__(self) -> int:
        return len(self._held)

    def _expired(self) -> list[Session]:
        now = self.clock()
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
