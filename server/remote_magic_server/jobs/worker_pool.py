"""Warm workers: a few worker processes started ahead of the jobs, each waiting for exactly one.

A fresh worker costs a round trip to the forkserver and, once it runs, a DuckDB start (about 20 ms, more
than staging a small job's rows). A warm worker has paid both before its job exists: it was forked from
the preloaded forkserver and, once it has waited 0.4 s with no job, opened its DuckDB and rehearsed
staging on made-up rows (`worker.main.wait`: a federated training's next step, which stages nothing,
comes sooner and finds none opened), and it waits on its pipe. It has
read nothing yet: no task, no dataset, no payload. When a job comes, the executor takes one worker
out of the pool for good and sends it the job's folder; the worker confines itself exactly as a fresh
one does, before it reads the payload, runs that one job and exits. A worker is never handed back, so
no process ever serves two jobs or two users.

A background thread keeps `size` workers waiting: it starts one when a job took one, and replaces one
that died while it waited (its exit is noticed through its process sentinel, not by polling; after a
death it pauses a second, so workers that cannot start do not restart in a tight loop). `close`
stops the thread and every waiting worker; a killed server takes them with it (they die with their
parent, the forkserver, like every worker).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

log = logging.getLogger("remote_magic_server.scheduler")

Warm = tuple[BaseProcess, Connection]
LOST_PAUSE_S = 1.0  # after a waiting worker died: the most often a pool of crashing workers restarts one


class WorkerPool:
    """`size` warm workers started by `start_one`, each taken once by `take`."""

    def __init__(self, start_one: Callable[[], Warm], size: int):
        self.start_one = start_one
        self.size = size
        self._idle: list[Warm] = []
        self._lock = threading.Lock()
        self._closed = False
        self._wake_read, self._wake_write = os.pipe()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Start filling the pool in the background."""
        self._thread = threading.Thread(target=self._keep_filled, name="warm-workers", daemon=True)
        self._thread.start()

    def take(self) -> Warm | None:
        """A waiting worker, removed from the pool for good; None when none is waiting (start a fresh one)."""
        with self._lock:
            while self._idle:
                process, conn = self._idle.pop(0)
                if process.is_alive() and not conn.poll():  # a waiting worker sends nothing: data is EOF
                    self._wake()
                    return process, conn
                self._discard(process, conn, "warm_worker_lost")
        self._wake()
        return None

    def close(self) -> None:
        """Stop refilling and end every waiting worker; return once they are gone."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for process, conn in idle:
            self._discard(process, conn, "warm_worker_stopped")
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")

    @staticmethod
    def _discard(process: BaseProcess, conn: Connection, event: str) -> None:
        conn.close()  # a waiting worker reads the end of its pipe and exits
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        log.info(event, extra={"pid": process.pid, "exitcode": process.exitcode})

    def _keep_filled(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                lost = [(p, c) for p, c in self._idle if not p.is_alive()]
                self._idle = [(p, c) for p, c in self._idle if p.is_alive()]
                missing = self.size - len(self._idle)
            for process, conn in lost:
                self._discard(process, conn, "warm_worker_lost")
            if lost:  # workers that die as they wait are not started again in a tight loop
                self._pause(LOST_PAUSE_S)
            if missing > 0:
                self._add_one()
                continue
            with self._lock:
                sentinels = [process.sentinel for process, _ in self._idle]
            if self._wake_read in wait([self._wake_read, *sentinels]):
                self._drain_wake()

    def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if woken (a take, a close)."""
        if wait([self._wake_read], seconds):
            self._drain_wake()

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._wake_read, 4096)

    def _add_one(self) -> None:
        try:
            process, conn = self.start_one()
        except Exception:  # noqa: BLE001 - a pool that cannot start workers leaves jobs to fresh ones
            log.exception("a warm worker could not be started")
            with self._lock:
                self._closed = True
            return
        with self._lock:
            if not self._closed:
                self._idle.append((process, conn))
                log.info("warm_worker_ready", extra={"pid": process.pid})
                return
        self._discard(process, conn, "warm_worker_stopped")
