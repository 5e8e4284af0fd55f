"""The queue and the state machine of jobs: claim, start on the executor, follow, finish, recover.

The scheduler knows only the `Executor` interface; which one runs the tasks is the config's choice. It
drives each job through the one conversation loop (conversation.py): progress goes to the store, the
admitted rows and the final report go to the release desk, and only what the desk releases is stored.
A worker that ends without a report becomes a failed job with a fixed code.

Nothing is lost across restarts: each worker's reference is recorded, and on start-up a worker that
outlived a killed server is reaped and its job re-queued, a bounded number of times. On SIGTERM the
scheduler drains: it starts nothing new, gives running jobs a grace period, then stops them and
re-queues them without counting the attempt.

Why it is long: a job's whole life in the server (claim in turn, launch, follow, the desk's word on
failures after admission, finish, re-queue, recover, drain) is one state machine, read in one place.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import JobResult
from remote_magic.families import MODEL_FILE

from ..config.settings import Settings
from ..protocol import SCRATCH_DIR, Admission, Isolation, ProgressNote, WorkerMessage
from ..release.desk import ReleaseDesk, Request
from .conversation import Conversation, Final, drive
from .executor import Execution, Executor, WorkerGone
from .store import JobRow, Store
from .tasks import BASE_MODEL_FILE, build_task
from .timeline import Timeline

log = logging.getLogger("remote_magic_server.scheduler")

MAX_ATTEMPTS = 3
TYPICAL_JOB_S = 5.0  # what a job is expected to take before any has finished
TYPICAL_WEIGHT = 0.2  # weight of the latest job in the running average of job durations
RETRY_AFTER_MAX_S = 30


class _Running:
    def __init__(self, job: JobRow, execution: Execution, task: Conversation, timeline: Timeline):
        self.job = job
        self.execution = execution
        self.task = task
        self.timeline = timeline
        self.cancelled = False
        self.interrupted = False
        self.started = time.monotonic()


class Scheduler:
    """Runs at most `settings.worker_count` jobs at once, oldest first."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        executor: Executor,
        desk: ReleaseDesk,
        on_change: Callable[[str], None] = lambda _id: None,
        on_finish: Callable[[JobRow, str, float], None] = lambda _job, _state, _seconds: None,
    ):
        self.settings = settings
        self.store = store
        self.executor = executor
        self.desk = desk
        self.on_change = on_change
        self.on_finish = on_finish
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._typical_s = TYPICAL_JOB_S

    def retry_after(self) -> int:
        """Seconds after which a user whose queue is full may expect a free place: about one recent
        job's time per worker (an average of job durations, never of their values), 1 to 30."""
        return max(1, min(RETRY_AFTER_MAX_S, math.ceil(self._typical_s / self.settings.worker_count)))

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
        threading.Thread(target=self.executor.warm, name="executor-warmup", daemon=True).start()

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
            run.execution.kill()
        deadline = time.monotonic() + 15
        while self.running_count() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.executor.close()
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
            run.execution.kill()
            return True
        job = self.store.get_job(job_id)
        error = ("cancelled", "the job was cancelled")
        if job is not None:
            error = self._with_charge(self._request(job), error)  # type: ignore[assignment]
        done = self.store.finish(job_id, "cancelled", error=error)
        if done:
            self.on_change(job_id)
        return done

    def _recover(self) -> None:
        """Jobs left running by a previous server process are re-queued, a bounded number of times.

        A worker of such a job that is still alive (its server was killed, and it could not be bound to
        it) is reaped first, so the job never runs twice at once."""
        for job_id, pid, mark in self.store.running_workers():
            if self.executor.reap((pid, mark)):
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
                except Refusal as refusal:  # a base model or its dataset version is gone
                    if self.store.finish(job.id, "failed", error=(refusal.code, refusal.message)):
                        self.on_finish(job, "failed", 0.0)
                    self.on_change(job.id)
                except Exception:  # noqa: BLE001 - a launch failure must not stop the loop
                    log.exception("could not start a worker for job %s", job.id)
                    self.store.finish(
                        job.id, "failed", error=("internal_error", "the job could not be started")
                    )
                    self.on_change(job.id)

    @staticmethod
    def _request(job: JobRow) -> Request:
        return Request(
            user=job.user,
            dataset=job.dataset,
            kind=job.kind,
            spec=job.spec,
            job_id=job.id,
            features=tuple(job.plan.features),
            options=job.plan.release,
            payload_sha256=job.plan.payload_sha256,
            dataset_version=job.plan.dataset_version,
            label_dtype=job.plan.label_dtype,
        )

    def _with_charge(self, request: Request, error: tuple[str, str] | None) -> tuple[str, str] | None:
        """A failure or cancellation in mode dp says what it cost: charged once admitted, else nothing."""
        note = self.desk.charge_note(request) if error is not None else None
        return error if note is None or error is None else (error[0], f"{error[1]}; {note}")

    def _place_base_model(self, job: JobRow, folder: Path) -> None:
        """Copy the registered version a job continues into its folder, exactly the bytes it was given."""
        base = job.plan.base_model
        assert base is not None
        source = self.store.job_dir(base.job) / MODEL_FILE
        data = source.read_bytes() if source.exists() else b""
        if hashlib.sha256(data).hexdigest() != base.sha256:
            raise Refusal(
                "base_model_unavailable", f"the model file of {base.ref} is no longer on the server"
            )
        (folder / BASE_MODEL_FILE).write_bytes(data)

    def _launch(self, job: JobRow) -> None:
        timeline = Timeline(job.submitted_at)
        timeline.mark("claimed")
        request = self._request(job)
        stored = self.desk.stored_result(request)
        if stored is not None:
            result, origin = stored
            self.store.copy_model(origin, job.id)
            final = Final("succeeded", result=result.model_dump(mode="json"))
            self._finish(job, request, final, 0.0, timeline=timeline)
            return
        try:
            self.desk.check_budget(request)
        except Refusal as refusal:
            self._finish(job, request, Final.failed(refusal.code, refusal.message), 0.0, timeline=timeline)
            return
        folder = self.store.job_dir(job.id)
        if job.plan.base_model is not None:
            self._place_base_model(job, folder)
        task = build_task(self.settings, job.kind, job.dataset, job.spec, job.plan)  # type: ignore[arg-type]
        # Marked before the hand-over: a warm worker may begin confining before `start` returns here.
        timeline.mark("started")
        execution = self.executor.start(task, folder, name=f"job-{job.id}")
        pid, mark = execution.ref
        self.store.set_worker(job.id, pid, mark)
        log.info(
            "job_started", extra={"job": job.id, "pid": pid, "attempt": job.attempts, "warm": execution.warm}
        )
        run = _Running(job, execution, Conversation(self.desk, request, folder, execution), timeline)
        with self._lock:
            self._running[job.id] = run
        threading.Thread(target=self._watch, args=(run,), name=f"watch-{job.id}", daemon=True).start()

    def _job_message(self, run: _Running, message: WorkerMessage) -> Final | None:
        run.timeline.saw(message)
        if isinstance(message, ProgressNote):
            progress = {
                "stage": message.stage,
                "round": message.round,
                "total_rounds": message.total,
                "metric": self._progress_metric(run.job.dataset, message),
            }
            self.store.set_progress(run.job.id, progress)
            self.on_change(run.job.id)
            return None
        if isinstance(message, Isolation):
            self.store.set_isolation(run.job.id, message.applied)
            return None
        final = run.task.handle(message)
        if isinstance(message, Admission):
            run.timeline.mark("admitted")
        if final is not None and isinstance(final.result, JobResult):
            final.result = final.result.model_dump(mode="json")
        return final

    def _progress_metric(self, dataset: str, message: ProgressNote) -> dict | None:
        point = self.desk.progress_metric(dataset, message.metric)
        return point.model_dump(exclude_none=True) if point is not None else None

    def _watch(self, run: _Running) -> None:
        """Follow a job to its end. A final state is stored (and long-polls woken) as soon as it is
        known; the worker's exit is awaited after that, off the path to the result."""
        job = run.job
        timeout = self.settings.policy_for(job.dataset).job_timeout_s
        final: Final | None = None
        try:
            try:
                final = drive(
                    run.execution, lambda m: self._job_message(run, m), run.started + timeout, timeout
                )
            except WorkerGone as gone:
                final = self._end_of_worker(run, gone)
            if final is not None:
                self._conclude(run, final)
        finally:
            run.execution.close()
            shutil.rmtree(self.store.job_dir(job.id) / SCRATCH_DIR, ignore_errors=True)
            with self._lock:
                self._running.pop(job.id, None)
        # Stopped by the shutdown (or died while it drained): it runs again after the restart. A worker
        # we stopped ourselves does not use up one of the job's attempts.
        if final is None and self.store.requeue(job.id, refund=run.interrupted):
            log.info("job_requeued", extra={"job": job.id, "reason": "server shutting down"})
            self.on_change(job.id)
        self._wake.set()

    def _end_of_worker(self, run: _Running, gone: WorkerGone) -> Final | None:
        """How a job whose worker ended without a final message ends; None: re-queue it (shutdown)."""
        if run.interrupted or (self._draining.is_set() and not run.cancelled):
            return None
        if run.cancelled:
            return Final("cancelled", error=("cancelled", "the job was cancelled"))
        log.warning("worker_died", extra={"job": run.job.id, "code": gone.failure.code})
        return Final.failed(gone.failure.code, gone.failure.message)

    def _conclude(self, run: _Running, final: Final) -> None:
        """A job that ran ends: what the desk says of a failure after admission, then the store."""
        if run.cancelled:
            final = Final("cancelled", error=("cancelled", "the job was cancelled"))
        cause = None
        if final.error is not None and run.task.admitted is not None:
            cause = final.error[0]
            final.error = self.desk.after_admission(run.task.request, *final.error)
        seconds = time.monotonic() - run.started
        self._typical_s += (seconds - self._typical_s) * TYPICAL_WEIGHT
        self._finish(run.job, run.task.request, final, seconds, cause, run.timeline)

    def _finish(
        self,
        job: JobRow,
        request: Request,
        final: Final,
        seconds: float,
        cause: str | None = None,
        timeline: Timeline | None = None,
    ) -> None:
        result = final.result if final.state == "succeeded" else None
        final.error = self._with_charge(request, final.error)
        if self.store.finish(job.id, final.state, result=result, error=final.error):  # type: ignore[arg-type]
            self.on_finish(job, final.state, seconds)
        timeline = timeline or Timeline()
        timeline.mark("finished")
        self.on_change(job.id)
        code, reason = final.error if final.error else (None, None)
        self.desk.record(
            request, "released" if final.state == "succeeded" else final.state, code, reason, cause
        )
        log.info(
            "job_finished",
            extra={
                "job": job.id,
                "user": job.user,
                "dataset": job.dataset,
                "kind": job.kind,
                "state": final.state,
                "code": code,
                "cause": cause,
                "seconds": round(seconds, 3),
                "finished_at": timeline.marks["finished"],
                "timeline_ms": timeline.phases(),
            },
        )
        self._wake.set()
