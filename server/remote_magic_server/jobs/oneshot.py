"""Tasks that someone waits for: a describe request and a federated training's step (an analyst's HTTP
calls) and a payload review (the data owner's CLI). They run on the same executor and through the same
conversation as jobs, but are not queued: the caller waits, and at most `worker_count` of them run at
once."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from remote_magic.contract.codes import Refusal
from remote_magic.contract.query import DEFAULT_TRAIN_EVAL
from remote_magic.contract.wire import DescribeResult, FederatedSketch, FederatedSums, JobResult
from remote_magic.families.dpboost.prior import federated_prior, sketch_bound
from remote_magic.families.dpboost.schedule import Release, leaf_releases
from remote_magic.families.dpboost.settings import federated_settings

from ..config.settings import Settings
from ..plan import JobPlan
from ..protocol import SESSION_IN, SESSION_OUT, Admission, FederatedOrder, Task
from ..release.desk import ReleaseDesk, Request
from .conversation import Conversation, Final, drive, final_of
from .executor import Executor, WorkerGone
from .sessions import Session, Sessions
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
        request = _request(user, dataset, "describe", spec, plan, f"describe:{uuid.uuid4().hex}")
        stored = self.desk.stored_describe(request)
        if stored is not None:
            self.desk.record(request, "released", None, "the stored answer, repeated")
            return stored
        task = build_task(self.settings, "describe", dataset, spec, plan)
        return self._released(request, task, {})  # type: ignore[return-value]

    def _released(
        self, request: Request, task: Task, files: dict[str, bytes], keep: Keep | None = None
    ) -> object:
        """Run the task (`_converse`) and record its end in the audit log: its result, or a Refusal."""
        try:
            final = self._converse(request, task, files, keep)
        except Exception:
            log.exception("a %s on %s could not be released", request.kind, request.dataset)
            final = Final.failed("internal_error", "the request failed on the server")
        if final.state != "succeeded":
            code, message = final.error or ("internal_error", "the request failed on the server")
            self.desk.record(request, "refused" if self.desk.refused(code) else "failed", code, message)
            raise Refusal(code, message)
        self.desk.record(request, "released")
        return final.result

    def _converse(self, request: Request, task: Task, files: dict[str, bytes], keep: Keep | None) -> Final:
        """Run one task in a fresh folder holding `files` (and `keep.given`'s files), through the desk, in
        one of the slots; `keep.done` sees the folder of a task that succeeded before it goes."""
        timeout = self.settings.policy_for(request.dataset).job_timeout_s
        folder = self.settings.server.data_dir / task.kind / uuid.uuid4().hex[:16]
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        if keep is not None and keep.given is not None:
            shutil.copytree(keep.given, folder / SESSION_IN, copy_function=_link)
        try:
            with self._slots:
                execution = self.executor.start(task, folder, name=task.kind)
                resumed = keep.admission if keep is not None else None
                conversation = Conversation(self.desk, request, folder, execution, resumed)
                try:
                    final = drive(execution, conversation.handle, time.monotonic() + timeout, timeout)
                except WorkerGone as gone:
                    final = Final.failed(gone.failure.code, gone.failure.message)
                finally:
                    execution.close()
                if final.error is not None and conversation.admitted is not None:
                    final.error = self.desk.after_admission(request, *final.error)
                if keep is not None and final.state == "succeeded" and conversation.admitted is not None:
                    keep.done(folder, conversation.admitted.admission)
                return final
        finally:
            shutil.rmtree(folder, ignore_errors=True)


class Keep:
    """What a task leaves for the next one: `given` goes into its folder (SESSION_IN), with `admission`,
    the desk's record of its rows' admission (a worker that resumes it is charged as that);
    `done(folder, admission)` takes what the task left, and its rows' admission, before the folder goes."""

    def __init__(
        self, given: Path | None, admission: Admission | None, done: Callable[[Path, Admission], None]
    ):
        self.given = given
        self.admission = admission
        self.done = done


class FederatedSteps(Describer):
    """A federated training's steps on this server: each batch of trees in a fresh confined worker that
    sums the training rows' clipped gradients and hessians per leaf of the batch's public structure, the
    desk noising the sums (charged at admission). The first step stages the rows; later steps and the
    final evaluation take them, and their margins, from the training's session (sessions.py)."""

    def __init__(self, settings: Settings, executor: Executor, desk: ReleaseDesk):
        super().__init__(settings, executor, desk)
        self.sessions = Sessions(settings.server.data_dir / "federated")

    def step(
        self,
        user: str,
        dataset: str,
        spec: dict,
        plan: JobPlan,
        order: FederatedOrder,
        model: bytes | None,
        training: str | None = None,
    ) -> FederatedSums:
        """One batch's noisy sums released through the desk; raise Refusal. The same question again (the
        same analyst, spec, structure and settings, from the same model so far) is answered with the same
        draws at no further cost: a model names itself by its bytes' digest, a session by its first
        model's and every batch's leaves since, and a session step sent again after it succeeded (the
        session one batch on already) is that step again. A step without the model continues the
        training's session here, or is refused `federated_session_gone` at no cost."""
        staged_for = [spec, plan.dataset_version, order.features, order.settings, order.rho]
        fingerprint = _digest(staged_for)
        # A first step after a sketch (no model, no trees) takes its session, or if sent again, the next.
        opening = model is None and order.trees == 0 and not order.leaves
        alike = [_sketch_fingerprint(spec, plan, order)] if opening else []
        taken = self.sessions.take(user, training, fingerprint, *alike) if training is not None else None
        left: list[Session | None] = []  # what the step left, once it succeeded
        again = False
        digest = ""
        try:
            if model is not None:
                digest = hashlib.sha256(model).hexdigest()  # the model so far
            elif taken is not None:  # the session's model and the leaves of its last batch
                chained = [order.leaves, order.trees]
                again = taken.before is not None and _digest([taken.before, *chained]) == taken.asked
                digest = taken.asked if again else _digest([taken.digest, *chained])
            else:
                raise Refusal(
                    "federated_session_gone",
                    "this server holds no session of this training (restarted, or idle too long): send "
                    "the step with the whole model",
                )
            question = order.model_dump(exclude={"leaves", "trees", "session", "keep", "again"})
            key = f"federated:{_digest([user, spec, plan.dataset_version, question, digest])}"
            request = _request(
                user, dataset, "sums", spec, plan, key, step_rho=order.step_rho, releases=_releases(order)
            )
            self.desk.check_budget(request)  # before a worker starts; a step charged before passes, free
            resumed = taken if taken is not None and model is None else None
            given = resumed.folder if resumed is not None else None
            update = {"session": given is not None, "keep": training is not None, "again": again}
            order = order.model_copy(update=update)
            task = build_task(self.settings, "sums", dataset, spec, plan, federated=order)
            files = {order.model_file: model} if model is not None else {}
            keep = None
            if training is not None:
                continued = None if resumed is None else resumed.before if again else resumed.digest
                after = _digest([digest, order.batch])  # the model so far and the batch the session ends at

                def done(folder: Path, admission: Admission) -> None:
                    kept = self.sessions.adopt(folder / SESSION_OUT)
                    session = (
                        Session(kept, fingerprint, after, digest, continued, admission) if kept else None
                    )
                    left.append(session)

                keep = Keep(given, resumed.admission if resumed is not None else None, done)
            return self._released(request, task, files, keep)  # type: ignore[return-value]
        finally:
            if training is not None:
                # Once the step succeeded, the session it took is behind the model so far.
                self.sessions.put(user, training, left[0] if left else None, taken, moved_on=bool(left))

    def sketch(
        self, user: str, dataset: str, spec: dict, plan: JobPlan, order: FederatedOrder, training: str
    ) -> FederatedSketch:
        """A training's DP sketch of its rows over public grids (and the prior's sums): one Gaussian release
        (L2 `prior.sketch_bound`, `order.step_rho`) through the desk; asked again, its draws at no cost.
        Its rows are the session, which the first step bins to the candidates: one staging."""
        assert order.sketch is not None
        question = [user, training, spec, plan.dataset_version, order.sketch, order.prior, order.step_rho]
        try:
            prior = federated_prior(order.sketch, order.features, order.settings, order.prior)
        except (KeyError, TypeError, ValueError) as exc:
            raise Refusal("invalid_request", f"the features are not usable: {exc}") from None
        release = Release("gaussian", sketch_bound(order.sketch, prior), order.step_rho)
        key = f"federated-sketch:{_digest(question)}"
        request = _request(
            user, dataset, "sums", spec, plan, key, step_rho=order.step_rho, releases=(release,)
        )
        fingerprint = _sketch_fingerprint(spec, plan, order)
        taken = self.sessions.take(user, training, fingerprint)
        left: list[Session] = []
        try:
            self.desk.check_budget(request)
            task = build_task(
                self.settings, "sums", dataset, spec, plan, federated=order.model_copy(update={"keep": True})
            )

            def done(folder: Path, admission: Admission) -> None:
                kept = self.sessions.adopt(folder / SESSION_OUT)
                if kept is not None:  # the model so far: the public start, named by the sketch
                    left.append(Session(kept, fingerprint, key, key, None, admission))

            return self._released(request, task, {}, Keep(None, None, done))  # type: ignore[return-value]
        finally:
            self.sessions.put(user, training, left[0] if left else None, taken, moved_on=bool(left))

    def evaluate(
        self, user: str, dataset: str, spec: dict, plan: JobPlan, order: FederatedOrder, training: str
    ) -> JobResult:
        """The final model (the session's margins moved by the last batch's leaves) scored on the first
        step's evaluation rows, released as an evaluate job's result (`readmit` charges it as one); raise
        Refusal. It ends the session, whatever its outcome; without one that leads to the final model it
        is refused `federated_session_gone` at no cost (the client then runs an evaluate job)."""
        fingerprint = _digest([spec, plan.dataset_version, order.features, order.settings, order.rho])
        taken = self.sessions.take(user, training, fingerprint)
        try:
            if taken is None:
                raise Refusal(
                    "federated_session_gone",
                    "this server holds no session of this training (restarted, or idle too long): "
                    "evaluate the model with an evaluate job",
                )
            model = _digest([taken.digest, order.leaves, order.trees])  # the final model, named by its chain
            question = order.model_dump(exclude={"leaves", "trees", "session", "keep", "again"})
            key = f"federated-eval:{_digest([user, spec, plan.dataset_version, question, model])}"
            scored = {**spec, "eval": spec.get("eval") or DEFAULT_TRAIN_EVAL}  # the rows the steps left out
            request = _request(
                user, dataset, "evaluate", scored, plan, key, job_id=f"federated-{uuid.uuid4().hex[:12]}"
            )
            self.desk.check_budget(request)
            task = build_task(
                self.settings,
                "sums",
                dataset,
                spec,
                plan,
                federated=order.model_copy(update={"session": True}),
            )
            keep = Keep(taken.folder, taken.admission, lambda folder, admission: None)
            return self._released(request, task, {}, keep)  # type: ignore[return-value]
        finally:
            self.sessions.put(user, training, None, taken, moved_on=True)

    def end(self, user: str, training: str) -> bool:
        """Drop a training's session (its last step is done); False when it had none here."""
        return self.sessions.drop(user, training)


def _sketch_fingerprint(spec: dict, plan: JobPlan, order: FederatedOrder) -> str:
    """What a sketch's session was staged for (not the candidates: its first step bins to those)."""
    return _digest(["sketch", spec, plan.dataset_version, order.settings, order.rho])


def _releases(order: FederatedOrder) -> tuple[Release, ...]:
    """The gradient and hessian releases the trainer's proof makes for the step's batch, which the desk
    holds its worker's noise requests to (a worker cannot ask for less noise)."""
    try:
        trainer = federated_settings(order.settings)
        return leaf_releases(trainer, trainer.scales(order.rho), int(order.batch["rounds"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise Refusal("invalid_request", f"the training's settings are not usable: {exc}") from None


def _request(
    user: str, dataset: str, kind: str, spec: dict, plan: JobPlan, charge_key: str, **more: object
) -> Request:
    """The desk's request for a one-shot job on the plan's features and data version."""
    return Request(
        user=user,
        dataset=dataset,
        kind=kind,
        spec=spec,
        features=tuple(plan.features),
        charge_key=charge_key,
        dataset_version=plan.dataset_version,
        **more,  # type: ignore[arg-type]
    )


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _link(source: str, target: str) -> None:
    """A session's file in a step's folder: the same file (the step writes its own, never these)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


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
