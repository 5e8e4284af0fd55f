"""The parent's side of one task's conversation with its worker: one loop for every kind of task.

`drive` reads the worker's typed messages until one ends the task, the worker dies or time runs out;
`Conversation` answers the messages that matter to disclosure: the admitted rows (or a federated step's
session, admitted at its first step), a DP training's noise requests and the final report go to the
release desk, and what it releases (or refuses) becomes the task's `Final`. The scheduler adds what only
jobs have (progress in the store, cancellation, shutdown).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from remote_magic.contract.codes import Refusal

from ..protocol import (
    Admission,
    Decision,
    DescribeReport,
    Failure,
    NoiseAnswers,
    NoiseBatch,
    NoiseRequest,
    Resumed,
    ReviewReport,
    SketchReport,
    SumsReport,
    TrainingPlan,
    TrainReport,
    WorkerMessage,
)
from ..release.desk import Admitted, ReleaseDesk, Request
from .executor import Execution, InvalidReport

log = logging.getLogger("remote_magic_server.scheduler")

POLL_S = 1.0


@dataclass
class Final:
    """How a task ended: its state, what was released (a result, an answer, a review text), or an error."""

    state: str
    result: object = None
    error: tuple[str, str] | None = None

    @classmethod
    def failed(cls, code: str, message: str) -> Final:
        return cls("failed", error=(code, message))


def drive(
    execution: Execution,
    handle: Callable[[WorkerMessage], Final | None],
    deadline: float,
    timeout_s: float,
) -> Final:
    """Feed a task's messages to `handle` until one of them ends it, or time runs out.

    A worker that ends without a final message raises WorkerGone (the caller knows whether it stopped
    it); a message outside the protocol ends the task with `invalid_worker_report`."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            execution.kill()
            return Final.failed("timeout", f"the job ran longer than {timeout_s:g} s and was stopped")
        try:
            message = execution.receive(min(remaining, POLL_S))
        except InvalidReport:
            execution.kill()
            log.warning("a worker sent a message that is not in the protocol")
            return Final.failed("invalid_worker_report", "the job's worker sent an invalid report")
        if message is None:
            continue
        final = handle(message)
        if final is not None:
            return final


def final_of(message: WorkerMessage) -> Final | None:
    """The end a failure or a review report makes of a task (the desk is not involved in either)."""
    if isinstance(message, Failure):
        return Final.failed(message.code, message.message)
    if isinstance(message, ReviewReport):
        return Final("succeeded", result=message.text)
    return None


class Conversation:
    """Passes a task's admission and report to the release desk; returns the task's end when it comes."""

    def __init__(
        self,
        desk: ReleaseDesk,
        request: Request,
        folder: Path,
        execution: Execution,
        resumed: Admission | None = None,
    ):
        self.desk = desk
        self.request = request
        self.folder = folder
        self.execution = execution
        self.admitted: Admitted | None = None
        self.resumed = resumed  # a federated session's admission, which a `Resumed` step is charged as

    def handle(self, message: WorkerMessage) -> Final | None:
        try:
            final = self._handle(message)
        except Exception:  # noqa: BLE001 - a failure here must end the task, not the thread that drives it
            log.exception("a message of %s %s could not be handled", self.request.kind, self.request.job_id)
            self.execution.kill()
            final = Final.failed("internal_error", "the job failed on the server")
        if final is not None and self.admitted is not None:
            self.desk.keep_noise(self.request, self.admitted)
        return final

    def _handle(self, message: WorkerMessage) -> Final | None:
        if isinstance(message, Admission):
            try:
                self.admitted = self.desk.admit(self.request, message, self.folder)
            except Refusal as refusal:
                self.execution.reply(Decision(proceed=False))
                return Final.failed(refusal.code, refusal.message)
            noisy = self.admitted.noisy
            train = noisy.splits.get("train") if noisy is not None else None
            self.execution.reply(Decision(proceed=True, train_rows=train.rows if train is not None else None))
            return None
        if isinstance(message, Resumed):
            if self.resumed is None or self.admitted is not None:
                self.execution.kill()
                return Final.failed("invalid_worker_report", "the job's worker resumed no session of its own")
            try:
                self.admitted = self.desk.readmit(self.request, self.resumed)
            except Refusal as refusal:
                self.execution.kill()
                return Final.failed(refusal.code, refusal.message)
            return None
        if isinstance(message, (TrainingPlan, NoiseRequest, NoiseBatch)):
            if self.admitted is None:
                self.execution.kill()
                return Final.failed("invalid_worker_report", "the job's worker asked for noise too early")
            try:
                if isinstance(message, TrainingPlan):
                    self.desk.plan_training(self.request, self.admitted, message)
                elif isinstance(message, NoiseBatch):
                    answers = self.desk.noise_batch(self.request, self.admitted, message.requests)
                    self.execution.reply(NoiseAnswers(answers=answers))
                else:
                    self.execution.reply(self.desk.noise(self.request, self.admitted, message))
            except Refusal as refusal:
                self.execution.kill()
                return Final.failed(refusal.code, refusal.message)
            return None
        if isinstance(message, (TrainReport, DescribeReport, SumsReport, SketchReport)):
            if self.admitted is None:
                return Final.failed("invalid_worker_report", "the job's worker reported before admission")
            try:
                if isinstance(message, TrainReport):
                    released: object = self.desk.release_result(self.request, self.admitted, message)
                elif isinstance(message, SumsReport):
                    released = self.desk.release_sums(self.request, self.admitted, message)
                elif isinstance(message, SketchReport):
                    released = self.desk.release_sketch(self.request, self.admitted, message)
                else:
                    released = self.desk.release_describe(self.request, message)
            except Refusal as refusal:
                return Final.failed(refusal.code, refusal.message)
            return Final("succeeded", result=released)
        return final_of(message)
