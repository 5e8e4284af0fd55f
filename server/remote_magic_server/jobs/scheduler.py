"""Dispatch queued jobs to fresh worker processes and record what comes back.

Workers are forked by a multiprocessing forkserver whose parent preloaded the heavy modules, and are
started by module name, so this process never imports XGBoost or DuckDB. A worker talks JSON over a
pipe; its raw aggregates pass through the disclosure policy here, in the trusted parent, before anything
is stored as a result. A worker that dies without a word (a segfault in XGBoost's parser, the OOM
killer, the CPU limit) becomes a failed job with a fixed code; the server keeps serving.

Nothing is lost across restarts: each worker's pid is recorded, workers die with their parent (Linux
PR_SET_PDEATHSIG), and on start-up a worker that outlived a killed server is reaped and its job re-queued,
a bounded number of times. On SIGTERM the scheduler drains: it starts nothing new, gives running jobs a
grace period, then stops them and re-queues them without counting the attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from pyroaring import BitMap

from ..privacy.describe import release_describe, sensitivity
from ..privacy.guard import check_differencing
from ..privacy.model_release import check_model_release
from ..privacy.policy import PolicyRefusal, release, release_progress_metric
from ..settings import Policy, Settings
from .audit import open_audit
from .launch import run_by_name
from .ledger import Ledger
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


class DescribeFailed(Exception):
    """A describe request failed or was refused; code and message are fixed, public text."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read_row_sets(folder: Path, names: dict) -> dict[str, BitMap]:
    """The admitted row sets a worker left in its folder, by role (file names only, never paths)."""
    return {
        str(role): BitMap.deserialize((folder / Path(str(name)).name).read_bytes())
        for role, name in names.items()
    }


def process_mark(pid: int) -> str | None:
    """The start time of a process (Linux: clock ticks since boot), to tell it from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie has already stopped running
    return fields[19]


def reap_orphan(pid: int, mark: str | None, timeout: float = 5.0) -> bool:
    """Kill a worker left by a previous server process, if that pid still is that process."""
    if mark is None or process_mark(pid) != mark:
        return False
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while process_mark(pid) == mark and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


class _Running:
    def __init__(self, job: JobRow, process: multiprocessing.process.BaseProcess, conn: Connection):
        self.job = job
        self.process = process
        self.conn = conn
        self.stage = "starting"
        self.cancelled = False
        self.interrupted = False
        self.started = time.monotonic()


class Scheduler:
    """Runs at most `settings.worker_count` jobs at once, oldest first."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        on_change: Callable[[str], None] = lambda _id: None,
        on_finish: Callable[[JobRow, str, float], None] = lambda _job, _state, _seconds: None,
    ):
        self.settings = settings
        self.store = store
        self.on_change = on_change
        self.on_finish = on_finish
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload([PRELOAD_MODULE])
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self.ledger = Ledger(settings.ledger_path)
        self.audit = open_audit(settings)
        self._describe_slots = threading.BoundedSemaphore(settings.worker_count)

    @property
    def threads_per_job(self) -> int:
        share = max(1, (os.cpu_count() or 1) // self.settings.worker_count)
        cap = self.settings.policy.max_threads
        return min(share, cap) if cap else share

    def running_count(self) -> int:
        with self._lock:
            return len(self._running)

    @property
    def state(self) -> str:
        """'running', 'draining' (SIGTERM: finishing running jobs) or 'stopped' (or never started)."""
        if self._draining.is_set():
            return "stopped" if self._stop.is_set() else "draining"
        return "running" if self._thread is not None and self._thread.is_alive() else "stopped"

    def start(self) -> None:
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()
        threading.Thread(target=self._warm_forkserver, name="forkserver-warmup", daemon=True).start()

    def _warm_forkserver(self) -> None:
        proc = self.ctx.Process(target=run_by_name, args=(PRELOAD_MODULE, "ready"))
        proc.start()
        proc.join()

    def drain(self, grace: float) -> None:
        """Start no more jobs; running ones may finish within `grace` seconds from now."""
        if not self._draining.is_set():
            self._deadline = time.monotonic() + grace
            self._draining.set()
            self._wake.set()
            log.info("scheduler_draining", extra={"running": self.running_count(), "grace_s": grace})

    def stop(self, grace: float = 0.0) -> None:
        """Drain (if not already), wait for the grace period, then stop the rest and re-queue them."""
        self.drain(grace)
        while self.running_count() and time.monotonic() < self._deadline:
            time.sleep(0.05)
        with self._lock:
            running = list(self._running.values())
        for run in running:
            run.interrupted = True
            run.process.kill()
        deadline = time.monotonic() + 15
        while self.running_count() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)
        log.info("scheduler_stopped", extra={"requeued": [run.job.id for run in running]})

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
        """Jobs left running by a previous server process are re-queued, a bounded number of times.

        A worker of such a job that is still alive (its server was killed, and it could not be bound to
        it) is killed first, so the job never runs twice at once."""
        for job_id, pid, mark in self.store.running_workers():
            if reap_orphan(pid, mark):
                log.warning("orphan_reaped", extra={"job": job_id, "pid": pid})
        for job_id in self.store.running_ids():
            job = self.store.get_job(job_id)
            if job is not None and job.attempts >= MAX_ATTEMPTS:
                self.store.finish(
                    job_id,
                    "failed",
                    error=(
                        "interrupted",
                        f"the server stopped while this job ran, {job.attempts} times; it was not retried",
                    ),
                )
                log.warning("job_failed_interrupted", extra={"job": job_id, "attempts": job.attempts})
            else:
                self.store.requeue(job_id)
                log.info("job_requeued", extra={"job": job_id, "reason": "server restarted"})
        stray = self.store.remove_stray_folders()
        if stray:
            log.info("stray_folders_removed", extra={"count": len(stray)})

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            while not self._draining.is_set() and self.running_count() < self.settings.worker_count:
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
            "allow_model_release": dataset.allow_model_release,
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
        self.store.set_worker(job.id, process.pid, process_mark(process.pid))
        log.info("job_started", extra={"job": job.id, "pid": process.pid, "attempt": job.attempts})
        run = _Running(job, process, parent_conn)
        with self._lock:
            self._running[job.id] = run
        threading.Thread(target=self._watch, args=(run,), name=f"watch-{job.id}", daemon=True).start()

    def _watch(self, run: _Running) -> None:
        job = run.job
        timeout = self.settings.policy_for(job.dataset).job_timeout_s
        outcome: tuple[str, dict | None, tuple[str, str] | None] | None = None
        stopped_by_shutdown = False
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
                    stopped_by_shutdown = run.interrupted or (self._draining.is_set() and not run.cancelled)
                    outcome = None if stopped_by_shutdown else self._death(run)
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
        if stopped_by_shutdown or outcome is None:
            # Stopped by the shutdown (or died while it drained): it runs again after the restart. A
            # worker we stopped ourselves does not use up one of the job's attempts.
            if self.store.requeue(job.id, refund=run.interrupted):
                log.info("job_requeued", extra={"job": job.id, "reason": "server shutting down"})
                self.on_change(job.id)
            return
        if run.cancelled:
            outcome = ("cancelled", None, ("cancelled", "the job was cancelled"))
        seconds = time.monotonic() - run.started
        if self.store.finish(job.id, outcome[0], result=outcome[1], error=outcome[2]):
            self.on_finish(job, outcome[0], seconds)
        self.audit.record(
            "release_decision",
            job.user,
            job=job.id,
            dataset=job.dataset,
            kind=job.kind,
            spec=job.spec,
            decision="released" if outcome[0] == "succeeded" else outcome[0],
            code=outcome[2][0] if outcome[2] else None,
            reason=outcome[2][1] if outcome[2] else None,
        )
        log.info(
            "job_finished",
            extra={
                "job": job.id,
                "state": outcome[0],
                "code": outcome[2][0] if outcome[2] else None,
                "seconds": round(seconds, 3),
            },
        )
        self.on_change(job.id)
        self._wake.set()

    def _death(self, run: _Running) -> tuple[str, None, tuple[str, str]]:
        run.process.join(timeout=5)
        if run.cancelled:
            return ("cancelled", None, ("cancelled", "the job was cancelled"))
        log.warning(
            "worker_died", extra={"job": run.job.id, "exit_code": run.process.exitcode, "stage": run.stage}
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
            return self._release(job, message["raw"])
        return None

    def _release(self, job: JobRow, raw: dict) -> tuple[str, dict | None, tuple[str, str] | None]:
        """Guard, policy and model rules on a worker's report; record what was released."""
        policy = self.settings.policy_for(job.dataset).model_dump()
        try:
            with self.ledger.decision():
                sets = read_row_sets(self.store.job_dir(job.id), raw["row_sets"])
                released = self.ledger.released_sets(job.user, self._table(job.dataset))
                check_differencing(sets, released, int(raw["table_rows"]), policy["min_count"])
                result = release(raw, policy, job.id, job.dataset, job.kind)
                self.ledger.record_sets(job.user, self._table(job.dataset), f"job:{job.id}", sets)
        except PolicyRefusal as refusal:
            return ("failed", None, (refusal.code, refusal.message))
        except Exception:  # noqa: BLE001 - a malformed worker report is an internal error
            log.exception("job %s: the worker's report could not be released", job.id)
            return ("failed", None, ("internal_error", "the job failed on the server"))
        if job.kind == "train" and self.settings.datasets[job.dataset].allow_model_release:
            self._decide_model(job, raw.get("model") or {}, policy)
        return ("succeeded", result.model_dump(mode="json"), None)

    def _table(self, dataset: str) -> str:
        """The ledger's key for a dataset: its file, so one table served under two names shares a history."""
        return str(self.settings.datasets[dataset].path)

    def _decide_model(self, job: JobRow, facts: dict, policy: dict) -> None:
        try:
            check_model_release(facts, policy)
            state, message = "awaiting_approval", "the model passed the release rules and awaits approval"
        except PolicyRefusal as refusal:
            state, message = "refused", refusal.message
        except (KeyError, TypeError, ValueError):
            state, message = "refused", "the model's release facts were incomplete"
        self.ledger.set_model_state(job.id, job.user, job.dataset, state, message)
        self.audit.record(
            "model_release_decision", job.user, job=job.id, dataset=job.dataset, state=state, reason=message
        )

    # describe
    def describe(self, user: str, dataset: str, spec: dict, plan: dict) -> dict:
        """Run a describe in a fresh worker and release its aggregates (guard, policy, DP budget)."""
        try:
            answer, note = self._describe(user, dataset, spec, plan)
        except PolicyRefusal as refusal:
            self._audit_describe(user, dataset, spec, "refused", refusal.code, refusal.message)
            raise DescribeFailed(refusal.code, refusal.message) from None
        except DescribeFailed as failure:
            self._audit_describe(user, dataset, spec, "failed", failure.code, failure.message)
            raise
        except Exception:
            log.exception("describe on %s could not be released", dataset)
            self._audit_describe(user, dataset, spec, "failed", "internal_error", "internal error")
            raise DescribeFailed("internal_error", "the request failed on the server") from None
        self._audit_describe(user, dataset, spec, "released", None, note)
        return answer

    def _describe(self, user: str, dataset: str, spec: dict, plan: dict) -> tuple[dict, str | None]:
        policy = self.settings.policy_for(dataset)
        dp = self.settings.datasets[dataset].dp
        table = self._table(dataset)
        # On DP datasets an answer is stored under two keys: the request as written (answered without a
        # worker) and what it describes (the admitted rows, label and columns), so a filter spelled
        # differently or features in another order get the stored answer too, never fresh noise.
        request_key = _digest(dataset, spec["label"], spec.get("where"), sorted(plan["features"]))
        if dp:
            stored = self.ledger.stored_answer(user, table, request_key)
            if stored is not None:
                return self._repeat(user, table, policy, stored)
        folder = self.settings.server.data_dir / "describe" / uuid.uuid4().hex[:16]
        try:
            task = self._describe_task(dataset, spec, plan, policy)
            raw = self._run_describe(folder, task, policy.job_timeout_s)
            sets = read_row_sets(folder, raw["row_sets"])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        with self.ledger.decision():
            released = self.ledger.released_sets(user, table)
            check_differencing(sets, released, int(raw["table_rows"]), policy.min_count)
            if not dp:
                answer = release_describe(raw, policy.model_dump(), dataset, spec["label"]).model_dump(
                    mode="json"
                )
                self.ledger.record_sets(user, table, "describe", sets)
                return answer, None
            from ..privacy.dp import laplace_counts

            rows = sets["admitted"].serialize().hex()
            content_key = _digest(dataset, spec["label"], rows, sorted(plan["features"]))
            stored = self.ledger.stored_answer(user, table, content_key)
            if stored is not None:
                self.ledger.store_answer(user, table, request_key, stored)
                return self._repeat(user, table, policy, stored)
            self._check_budget(user, table, policy)
            noise = laplace_counts(sensitivity(raw), policy.dp_epsilon)
            answer = release_describe(raw, policy.model_dump(), dataset, spec["label"], noise).model_dump(
                mode="json"
            )
            self.ledger.record_sets(user, table, "describe", sets)
            self.ledger.spend(user, table, [content_key, request_key], policy.dp_epsilon, answer)
        answer["privacy_budget"] = self._budget(user, table, policy, repeated=False)
        return answer, None

    def _repeat(self, user: str, table: str, policy: Policy, stored: dict) -> tuple[dict, str]:
        stored["privacy_budget"] = self._budget(user, table, policy, repeated=True)
        return stored, "the stored answer, repeated"

    def _audit_describe(
        self, user: str, dataset: str, spec: dict, decision: str, code: str | None, reason: str | None
    ) -> None:
        self.audit.record(
            "release_decision",
            user,
            kind="describe",
            dataset=dataset,
            spec=spec,
            decision=decision,
            code=code,
            reason=reason,
        )

    def _check_budget(self, user: str, dataset: str, policy: Policy) -> None:
        if self.ledger.spent(user, dataset) + policy.dp_epsilon > policy.dp_epsilon_cap + 1e-9:
            raise PolicyRefusal(
                "privacy_budget_exhausted",
                f"your privacy budget on this dataset (epsilon {policy.dp_epsilon_cap:g}) is spent; "
                "repeat an earlier request to see its stored answer",
            )

    def _budget(self, user: str, dataset: str, policy: Policy, repeated: bool) -> dict:
        spent = self.ledger.spent(user, dataset)
        return {
            "epsilon_per_release": policy.dp_epsilon,
            "epsilon_spent": round(spent, 6),
            "epsilon_remaining": round(max(0.0, policy.dp_epsilon_cap - spent), 6),
            "repeated": repeated,
        }

    def _describe_task(self, dataset: str, spec: dict, plan: dict, policy: Policy) -> dict:
        config = self.settings.datasets[dataset]
        return {
            "kind": "describe",
            "spec": spec,
            "features": plan["features"],
            "filter_columns": plan["filter_columns"],
            "id_column": config.id_column,
            "path": str(config.path),
            "policy": policy.model_dump(),
            "threads": self.threads_per_job,
            "cpu_seconds": policy.job_timeout_s * self.threads_per_job + 30,
            "memory_mb": policy.worker_memory_mb,
            "max_payload_bytes": 0,
        }

    def _run_describe(self, folder: Path, task: dict, timeout: float) -> dict:
        """Start a worker for one describe and wait for its report; at most worker_count at once."""
        folder.mkdir(parents=True)
        (folder / "task.json").write_text(json.dumps(task))
        with self._describe_slots:
            parent_conn, child_conn = self.ctx.Pipe(duplex=False)
            process = self.ctx.Process(
                target=run_by_name, args=(WORKER_MODULE, "run", str(folder), child_conn), name="describe"
            )
            process.start()
            child_conn.close()
            deadline = time.monotonic() + timeout
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise DescribeFailed("timeout", "the request ran too long and was stopped")
                    if not parent_conn.poll(min(remaining, 1.0)):
                        continue
                    try:
                        message = json.loads(parent_conn.recv_bytes(MAX_MESSAGE_BYTES))
                    except (EOFError, OSError, ValueError):
                        raise DescribeFailed(*_DEFAULT_DEATH) from None
                    if message.get("type") == "result":
                        return message["raw"]
                    if message.get("type") == "error":
                        raise DescribeFailed(
                            str(message.get("code", "internal_error")),
                            str(message.get("message", "the request failed on the server"))[:500],
                        )
            finally:
                process.join(timeout=10)
                if process.is_alive():
                    process.kill()
                    process.join(timeout=5)
                parent_conn.close()
