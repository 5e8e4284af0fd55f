"""Dispatch queued jobs to fresh worker processes and record what comes back.

Workers are forked by a multiprocessing forkserver whose parent preloaded the heavy modules, and are
started by module name, so this process never imports XGBoost or DuckDB. A worker talks JSON over a
pipe; its raw aggregates pass through the disclosure policy here, in the trusted parent, before anything
is stored as a result. A worker that dies without a word (a segfault in XGBoost's parser, the OOM
killer, the CPU limit) becomes a failed job with a fixed code; the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from ..privacy.policy import PolicyRefusal, release, release_progress_metric
from ..settings import Settings
from .launch import run_by_name
from .store import JobRow, Store

log = logging.getLogger("remote_magic_server.scheduler")

WORKER_MODULE = "remote_magic_server.worker.main"
PRELOAD_MODULE = "remote_magic_server.worker.preload"
MAX_MESSAGE_BYTES = 16 * 2**20
MAX_ATTEMPTS = 3

_DEATH_CODES = {
    "starting": ("invalid_model", "the model could not be decoded: its bytes are corrupt or hostile"),
}
_DEFAULT_DEATH = ("worker_crashed", "the job's worker process stopped unexpectedly")
_SIGNAL_DEATHS = {
    -signal.SIGXCPU: ("cpu_limit", "the job used more CPU time than this server allows and was stopped"),
}


class _Running:
    def __init__(self, job: JobRow, process: multiprocessing.process.BaseProcess, conn: Connection):
        self.job = job
        self.process = process
        self.conn = conn
        self.stage = "starting"
        self.cancelled = False
        self.started = time.monotonic()


class Scheduler:
    """Runs at most `settings.worker_count` jobs at once, oldest first."""

    def __init__(self, settings: Settings, store: Store, on_change: Callable[[str], None] = lambda _id: None):
        self.settings = settings
        self.store = store
        self.on_change = on_change
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload([PRELOAD_MODULE])
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def threads_per_job(self) -> int:
        share = max(1, (os.cpu_count() or 1) // self.settings.worker_count)
        cap = self.settings.policy.max_threads
        return min(share, cap) if cap else share

    def running_count(self) -> int:
        with self._lock:
            return len(self._running)

    def start(self) -> None:
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()
        threading.Thread(target=self._warm_forkserver, name="forkserver-warmup", daemon=True).start()

    def _warm_forkserver(self) -> None:
        proc = self.ctx.Process(target=run_by_name, args=(PRELOAD_MODULE, "ready"))
        proc.start()
        proc.join()

    def stop(self, grace: float = 0.0) -> None:
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + grace
        while self.running_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            running = list(self._running.values())
        for run in running:
            run.process.kill()
        for run in running:
            run.process.join(timeout=5)
            self.store.requeue(run.job.id)
        if self._thread:
            self._thread.join(timeout=5)

    def notify(self) -> None:
        """A job was queued: look for work now."""
        self._wake.set()

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; return whether it was still cancellable."""
        with self._lock:
            run = self._running.get(job_id)
            if run is not None:
                run.cancelled = True
        if run is not None:
            run.process.kill()
            return True
        done = self.store.finish(job_id, "cancelled", error=("cancelled", "the job was cancelled"))
        if done:
            self.on_change(job_id)
        return done

    def _recover(self) -> None:
        """Jobs left running by a previous server process are re-queued, a bounded number of times."""
        for job_id in self.store.running_ids():
            job = self.store.get_job(job_id)
            if job is not None and job.attempts >= MAX_ATTEMPTS:
                self.store.finish(
                    job_id,
                    "failed",
                    error=("interrupted", "the server stopped during this job too many times"),
                )
            else:
                self.store.requeue(job_id)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            while not self._stop.is_set() and self.running_count() < self.settings.worker_count:
                job = self.store.claim_next()
                if job is None:
                    break
                self.on_change(job.id)
                try:
                    self._launch(job)
                except Exception:  # noqa: BLE001 - a launch failure must not stop the loop
                    log.exception("could not start a worker for job %s", job.id)
                    self.store.finish(
                        job.id, "failed", error=("internal_error", "the job could not be started")
                    )
                    self.on_change(job.id)

    def _task(self, job: JobRow) -> dict:
        dataset = self.settings.datasets[job.dataset]
        policy = self.settings.policy_for(job.dataset)
        return {
            "kind": job.kind,
            "spec": job.spec,
            "features": job.plan["features"],
            "filter_columns": job.plan["filter_columns"],
            "derive_columns": job.plan.get("derive_columns", []),
            "id_column": dataset.id_column,
            "path": str(dataset.path),
            "policy": policy.model_dump(),
            "threads": self.threads_per_job,
            "cpu_seconds": policy.job_timeout_s * self.threads_per_job + 30,
            "memory_mb": policy.worker_memory_mb,
            "max_payload_bytes": self.settings.server.max_payload_mb * 2**20,
            "sandbox_uid": self.settings.server.sandbox_uid,
            "sandbox_gid": self.settings.server.sandbox_gid,
            "approved_sha256": job.plan.get("approved_sha256"),
        }

    def _launch(self, job: JobRow) -> None:
        folder = self.store.job_dir(job.id)
        (folder / "task.json").write_text(json.dumps(self._task(job)))
        parent_conn, child_conn = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(
            target=run_by_name, args=(WORKER_MODULE, "run", str(folder), child_conn), name=f"job-{job.id}"
        )
        process.start()
        child_conn.close()
        run = _Running(job, process, parent_conn)
        with self._lock:
            self._running[job.id] = run
        threading.Thread(target=self._watch, args=(run,), name=f"watch-{job.id}", daemon=True).start()

    def _watch(self, run: _Running) -> None:
        job = run.job
        timeout = self.settings.policy_for(job.dataset).job_timeout_s
        outcome: tuple[str, dict | None, tuple[str, str] | None] | None = None
        try:
            while outcome is None:
                remaining = timeout - (time.monotonic() - run.started)
                if remaining <= 0:
                    run.process.kill()
                    outcome = (
                        "failed",
                        None,
                        ("timeout", f"the job ran longer than {timeout} s and was stopped"),
                    )
                    break
                if not run.conn.poll(min(remaining, 1.0)):
                    continue
                try:
                    message = json.loads(run.conn.recv_bytes(MAX_MESSAGE_BYTES))
                except (EOFError, OSError, ValueError):
                    outcome = self._death(run)
                    break
                outcome = self._handle(run, message)
        finally:
            run.process.join(timeout=10)
            if run.process.is_alive():
                run.process.kill()
                run.process.join(timeout=5)
            run.conn.close()
            with self._lock:
                self._running.pop(job.id, None)
        if (
            self._stop.is_set()
            and not run.cancelled
            and outcome[0] == "failed"
            and outcome[2][0] == "worker_crashed"
        ):
            return  # killed by shutdown: stop() re-queues it
        if run.cancelled:
            outcome = ("cancelled", None, ("cancelled", "the job was cancelled"))
        self.store.finish(job.id, outcome[0], result=outcome[1], error=outcome[2])
        log.info(
            json.dumps(
                {
                    "event": "job_finished",
                    "job": job.id,
                    "state": outcome[0],
                    "code": outcome[2][0] if outcome[2] else None,
                }
            )
        )
        self.on_change(job.id)
        self._wake.set()

    def _death(self, run: _Running) -> tuple[str, None, tuple[str, str]]:
        run.process.join(timeout=5)
        if run.cancelled:
            return ("cancelled", None, ("cancelled", "the job was cancelled"))
        log.warning(
            "worker of job %s died with exit code %s in stage %s", run.job.id, run.process.exitcode, run.stage
        )
        if run.process.exitcode in _SIGNAL_DEATHS:
            return ("failed", None, _SIGNAL_DEATHS[run.process.exitcode])
        return ("failed", None, _DEATH_CODES.get(run.stage, _DEFAULT_DEATH))

    def _handle(self, run: _Running, message: dict) -> tuple[str, dict | None, tuple[str, str] | None] | None:
        kind = message.get("type")
        job = run.job
        if kind == "progress":
            run.stage = str(message.get("stage", run.stage))
            progress = {
                "stage": run.stage,
                "round": int(message.get("round") or 0),
                "total_rounds": int(message.get("total") or 0),
                "metric": release_progress_metric(message.get("metric") or {}),
            }
            self.store.set_progress(job.id, progress)
            self.on_change(job.id)
            return None
        if kind == "isolation":
            self.store.set_isolation(
                job.id, {str(k): str(v) for k, v in dict(message.get("applied", {})).items()}
            )
            return None
        if kind == "error":
            code = str(message.get("code", "internal_error"))
            return ("failed", None, (code, str(message.get("message", "the job failed on the server"))[:500]))
        if kind == "result":
            policy = self.settings.policy_for(job.dataset).model_dump()
            try:
                result = release(message["raw"], policy, job.id, job.dataset, job.kind)
            except PolicyRefusal as refusal:
                return ("failed", None, (refusal.code, refusal.message))
            except Exception:  # noqa: BLE001 - a malformed worker report is an internal error
                log.exception("job %s: the worker's report could not be released", job.id)
                return ("failed", None, ("internal_error", "the job failed on the server"))
            return ("succeeded", result.model_dump(mode="json"), None)
        return None
