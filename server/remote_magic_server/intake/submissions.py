"""Accepting a job: the checks every job passes before it is queued, whoever submits it.

A person's `POST /v1/jobs` and a recipe's triggered run come through here alike, so a recipe's run is
checked like a run by hand (spec against the schema, the payload's opcodes, the registry reference and
name) and then runs through the same scheduler and release desk, charged to the same user.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from remote_magic.contract.automation_wire import RegisterRequest
from remote_magic.contract.codes import Refusal
from remote_magic.contract.payload import CustomCodeRefused, ScanReport, scan
from remote_magic.contract.specs import class_values
from remote_magic.contract.wire import DatasetSpec, ReleaseOptions
from remote_magic.families import light
from remote_magic.families.base import check_classes_fit, check_kind

from ..audit import AuditLog
from ..config.settings import Settings
from ..data.versions import Versions
from ..jobs.store import JobRow, QueueFull, Store
from ..plan import BaseModelRef, JobPlan
from ..registry.access import Registry
from ..release.desk import ReleaseDesk, Request
from .catalog import check_spec
from .status import job_release

RETRY_AFTER_S = 5
log = logging.getLogger("remote_magic_server.api")


@dataclass
class Submission:
    user: str
    datasets: list[str]
    spec: DatasetSpec
    payload: bytes
    kind: str = "train"
    idempotency_key: str | None = None
    register: RegisterRequest | None = None
    base_model: str | None = None
    release: ReleaseOptions = field(default_factory=ReleaseOptions)
    origin: dict = field(default_factory=dict)


@dataclass
class Intake:
    settings: Settings
    store: Store
    registry: Registry
    versions: Versions
    audit: AuditLog
    desk: ReleaseDesk
    retry_after: Callable[[], int] = lambda: RETRY_AFTER_S
    """Seconds a user whose queue is full should wait (the scheduler's estimate of a free place)."""

    def _queue_full(self, queued: int) -> Refusal:
        return Refusal(
            "too_many_jobs",
            f"you already have {queued} jobs queued, the most this server accepts; "
            "submit more when some have started",
            headers={"Retry-After": str(self.retry_after())},
        )

    def _scan(self, sub: Submission, plan: JobPlan) -> tuple[str, ScanReport | None]:
        if not sub.payload:
            if sub.base_model is None:
                raise Refusal("invalid_model", "the job has no model")
            return "queued", None
        limit = self.settings.server.max_payload_mb * 2**20
        try:
            report = scan(sub.payload, limit)
            if sub.base_model is None:
                stops_early = (report.params or {}).get("early_stopping_rounds") is not None
                check_kind(sub.kind, report.fitted, report.model == "Pipeline", stops_early)
            self._check_bounds(sub, report)
            return "queued", report
        except CustomCodeRefused as exc:
            if not self.settings.datasets[sub.spec.dataset].allow_custom_code:
                raise
            plan.custom_code = exc.names
            return "awaiting_approval", None

    def _check_bounds(self, sub: Submission, report: ScanReport) -> None:
        """Refuse a model beyond the dataset's bounds, or a regressor given classes, from the parameters
        its payload states, before any job exists (a Booster's parameters are inside its bytes: the
        worker checks those)."""
        if report.params is None or report.rounds is None:
            return
        bounds = self.settings.bounds_for(sub.spec.dataset).for_kind(sub.kind)
        if report.family is not None:
            stated = light(report.family)
            stated.check_stated(report.estimator, report.params, report.rounds, bounds)
            task = stated.plan_of_scan(report.estimator, report.params, report.rounds).task
            check_classes_fit(task, sub.spec.classes)

    def _registry_plan(self, sub: Submission, report: ScanReport | None, plan: JobPlan) -> None:
        if sub.register is not None:
            if report is not None and report.model == "Pipeline":
                raise Refusal(
                    "unsupported_model",
                    "a registered version is a bare XGBoost booster; a Pipeline's preprocessors would be "
                    "lost",
                )
            self.registry.check_name(sub.user, sub.register.name)
            plan.registration = sub.register
        if sub.base_model is not None:
            if report is not None and report.model == "Pipeline":
                raise Refusal(
                    "unsupported_model",
                    "with a registered base model, send an unfitted XGBoost model (its parameters) or none",
                )
            plan.base_model = self.registry.base_for(sub.user, sub.base_model)
            trained = self.store.get_job(plan.base_model.job)
            if trained is None:
                raise Refusal(
                    "base_model_unavailable", f"the training job of {plan.base_model.ref} is no longer stored"
                )
            self._check_base_features(sub.spec, plan, plan.base_model, trained)
            plan.base_model.dp_release = job_release(self.desk, trained, self.store).state == "dp_model"
            sub.spec = self._base_classes(sub.spec, plan, trained)

    def _base_classes(self, spec: DatasetSpec, plan: JobPlan, trained: JobRow) -> DatasetSpec:
        """The spec with the classes a registered version was trained on, where a noisy-mode job needs
        public classes and neither the spec nor the data owner names them: the analyst who evaluates
        `churn@3` has no fitted model for the client to read them from. Its spec's classes were public
        when that job ran, so the worker's check holds them as it would the analyst's own (an owner's
        declaration on another dataset is not read: that config is not this analyst's); classes that
        are not values of this label's type are left out (the worker then asks for them)."""
        dataset = self.settings.datasets[spec.dataset]
        if spec.classes is not None or spec.label in dataset.column_levels:
            return spec
        if not self.settings.policy_for(spec.dataset).noisy or trained.spec.get("label") != spec.label:
            return spec
        classes = trained.spec.get("classes")
        if not classes:
            return spec
        try:
            class_values(list(classes), plan.label_dtype)
        except Refusal:
            return spec
        return spec.model_copy(update={"classes": [str(c) for c in classes]})

    def _check_base_features(
        self, spec: DatasetSpec, plan: JobPlan, base: BaseModelRef, trained: JobRow
    ) -> None:
        """A registered version scores and continues only on the features it was trained on: refuse any
        other list here, naming the columns, rather than let XGBoost fail inside the worker. The same
        columns in another order are put in the version's order."""
        derived_before, derived_now = list(trained.spec.get("derive") or {}), list(spec.derive or {})
        before, now = [*trained.plan.features, *derived_before], [*plan.features, *derived_now]
        if not before or before == now:  # a plan stored before plans named their features: as before
            return
        if set(before) == set(now) and derived_before == derived_now:
            plan.features = list(trained.plan.features)
            return
        lacks, adds = [c for c in before if c not in now], [c for c in now if c not in before]
        differences = [
            *([f"lacks {', '.join(lacks)}"] if lacks else []),
            *([f"adds {', '.join(adds)}"] if adds else []),
            *([] if lacks or adds else ["orders its derived columns differently"]),
        ]
        raise Refusal(
            "feature_mismatch",
            f"{base.ref} was trained on the features {', '.join(before)}; this spec "
            f"{' and '.join(differences)}. Use the version's features.",
        )

    def prepare(self, sub: Submission) -> tuple[JobPlan, str]:
        """Every check a job passes before it is stored; return its plan and first state, or raise."""
        if sub.register is not None and sub.kind != "train":
            raise Refusal("invalid_request", "only a training job can register its model")
        spec, plan = check_spec(self.settings, self.versions, sub.datasets, sub.spec)
        sub.spec = spec  # the dataset alone; its version is in the plan
        plan.release = sub.release
        state, report = self._scan(sub, plan)
        if report is not None:
            plan.model = report.model
        self._registry_plan(sub, report, plan)
        # What the model is: the payload, and the registered version it continues (an identical
        # question, the same bytes on the same data, is answered from the ledger at no cost).
        digest = hashlib.sha256(sub.payload)
        if plan.base_model is not None:
            digest.update(plan.base_model.sha256.encode())
        plan.payload_sha256 = digest.hexdigest()
        self._check_budget(sub, plan)
        plan.recipe, plan.trigger = sub.origin.get("recipe"), sub.origin.get("trigger")
        return plan, state

    def _check_budget(self, sub: Submission, plan: JobPlan) -> None:
        """Refuse a job the budget cannot pay for, unless it is an identical repeat: that one is answered
        from the store at no cost, at the cap too."""
        request = Request(
            user=sub.user,
            dataset=sub.spec.dataset,
            kind=sub.kind,
            spec=sub.spec.model_dump(mode="json"),
            options=sub.release,
            payload_sha256=plan.payload_sha256,
            dataset_version=plan.dataset_version,
        )
        if self.desk.stored_result(request) is None:
            self.desk.check_budget(request)

    def accept(self, sub: Submission) -> tuple[JobRow, bool]:
        """Check and persist a job; return (job, created). A repeated idempotency key returns its job."""
        if sub.idempotency_key is not None:
            existing = self.store.job_by_key(sub.user, sub.idempotency_key)
            if existing is not None:
                return existing, False
        max_queued = self.settings.server.max_queued_per_user
        if self.store.count_queued(sub.user) >= max_queued:
            raise self._queue_full(max_queued)  # before the payload scan: a 429 is cheap
        plan, state = self.prepare(sub)
        persisting = time.perf_counter()
        try:
            job, created = self.store.create_job(
                sub.user,
                sub.spec.dataset,
                sub.kind,
                sub.spec.model_dump(mode="json"),
                plan,
                sub.payload,
                sub.idempotency_key,
                state,
                max_queued,
            )
        except QueueFull as full:
            raise self._queue_full(full.queued) from None
        if created:
            persist_ms = round((time.perf_counter() - persisting) * 1e3, 2)
            log.info(
                "job_submitted",
                extra={
                    "job": job.id,
                    "user": sub.user,
                    "dataset": sub.spec.dataset,
                    "persist_ms": persist_ms,
                },
            )
            self.audit.record(
                "submit",
                sub.user,
                job=job.id,
                dataset=sub.spec.dataset,
                dataset_version=plan.dataset_version,
                kind=sub.kind,
                spec=job.spec,
                **sub.origin,
            )
        return job, created
