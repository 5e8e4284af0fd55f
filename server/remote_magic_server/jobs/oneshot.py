"""Tasks that someone waits for: a describe request (an analyst's HTTP call) and a payload review (the
data owner's CLI). They run on the same executor and through the same conversation as jobs, but are not
queued: the caller waits, and at most `worker_count` describe requests run at once."""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from pathlib import Path

from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import DescribeResult

from ..config.settings import Settings
from ..plan import JobPlan
from ..release.desk import ReleaseDesk, Request
from .conversation import Conversation, Final, drive, final_of
from .executor import Executor, WorkerGone
from .tasks import build_task

log = logging.getLogger("remote_magic_server.scheduler")


class Describer:
    def __init__(self, settings: Settings, executor: Executor, desk: ReleaseDesk):
        self.settings = settings
        self.executor = executor
        self.desk = desk
        self._slots = threading.BoundedSemaphore(settings.worker_count)

    def describe(self, user: str, dataset: str, spec: dict, plan: JobPlan) -> DescribeResult:
        """Describe a spec's admitted rows in a fresh worker, released through the desk; raise Refusal."""
        request = Request(
            user=user,
            dataset=dataset,
            kind="describe",
            spec=spec,
            features=tuple(plan.features),
            charge_key=f"describe:{uuid.uuid4().hex}",
            dataset_version=plan.dataset_version,
        )
        stored = self.desk.stored_describe(request)
        if stored is not None:
            self.desk.record(request, "released", None, "the stored answer, repeated")
            return stored
        try:
            final = self._run(request, plan)
        except Exception:
            log.exception("describe on %s could not be released", dataset)
            final = Final.failed("internal_error", "the request failed on the server")
        if final.state != "succeeded":
            code, message = final.error or ("internal_error", "the request failed on the server")
            decision = "refused" if self.desk.refused(code) else "failed"
            self.desk.record(request, decision, code, message)
            raise Refusal(code, message)
        self.desk.record(request, "released")
        return final.result  # type: ignore[return-value]

    def _run(self, request: Request, plan: JobPlan) -> Final:
        timeout = self.settings.policy_for(request.dataset).job_timeout_s
        folder = self.settings.server.data_dir / "describe" / uuid.uuid4().hex[:16]
        folder.mkdir(parents=True)
        task = build_task(self.settings, "describe", request.dataset, request.spec, plan)
        try:
            with self._slots:
                execution = self.executor.start(task, folder, name="describe")
                conversation = Conversation(self.desk, request, folder, execution)
                try:
                    final = drive(execution, conversation.handle, time.monotonic() + timeout, timeout)
                except WorkerGone as gone:
                    final = Final.failed(gone.failure.code, gone.failure.message)
                finally:
                    execution.close()
                if final.error is not None and conversation.admitted is not None:
                    final.error = self.desk.after_admission(request, *final.error)
                return final
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def review(settings: Settings, executor: Executor, payload: bytes, timeout: float = 60.0) -> str:
    """The data owner's review text of a payload, made in a confined worker; a one-line failure otherwise."""
    folder: Path = settings.server.data_dir / "review" / uuid.uuid4().hex[:16]
    folder.mkdir(parents=True)
    try:
        (folder / "model.pkl").write_bytes(payload)
        execution = executor.start(build_task(settings, "review"), folder, name="review")
        try:
            final = drive(execution, final_of, time.monotonic() + timeout, timeout)
        except WorkerGone as gone:
            final = Final.failed(gone.failure.code, gone.failure.message)
        finally:
            execution.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if final.state == "succeeded":
        return str(final.result)
    return f"(the review failed: {final.error[1] if final.error else 'no answer'})"
