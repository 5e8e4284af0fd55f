"""The jobs resource: submit, list, status (long-poll), result, cancel. Thin: check, persist, hand over."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile
from pydantic import ValidationError

from remote_magic.codes import Refusal
from remote_magic.families import xgboost_bounds
from remote_magic.families.base import check_kind
from remote_magic.payload import ScanReport, custom_code_names, scan
from remote_magic.wire import (
    FINAL_STATES,
    DatasetSpec,
    ErrorDetail,
    JobKind,
    JobList,
    JobResult,
    JobState,
    JobStatus,
    MetricPoint,
    Progress,
    ReleaseOptions,
    first_error,
    spec_error,
)

from ..jobs.store import JobRow, QueueFull, Store
from ..release.desk import Request
from ..settings import Settings
from .auth import Principal
from .catalog import check_spec
from .deps import AuditDep, DeskDep, NotifierDep, SchedulerDep, SettingsDep, StoreDep, User, VersionsDep

router = APIRouter(prefix="/v1", tags=["jobs"])
log = logging.getLogger("remote_magic_server.api")

MAIN_METRICS = ("auc", "accuracy", "r2", "rmse", "log_loss")
MAX_WAIT_S = 60.0


def _main_metric(job: JobRow) -> MetricPoint | None:
    if not job.result:
        return None
    metrics = job.result.get("metrics", {})
    for name in MAIN_METRICS:
        if name in metrics:
            return MetricPoint(name=name, eval=metrics[name])
    return None


def whole_seconds(stamp: str | None) -> str | None:
    """A timestamp as the analyst sees it: whole seconds, so a job's duration tells nothing finer."""
    return None if stamp is None else stamp[:19] + "Z"


def _rounds(job: JobRow) -> int | None:
    """The model's boosting rounds: from the result when done, from the worker's progress while it runs."""
    if job.result:
        return job.result["rounds"]["total"]
    return job.progress.get("total_rounds") or None


def status_of(job: JobRow) -> JobStatus:
    error = ErrorDetail(code=job.error_code, message=job.error_message or "") if job.error_code else None
    return JobStatus(
        id=job.id,
        dataset=job.dataset,
        dataset_version=job.plan.get("dataset_version"),
        kind=job.kind,  # type: ignore[arg-type]
        state=job.state,  # type: ignore[arg-type]
        progress=Progress.model_validate(job.progress),
        submitted_at=whole_seconds(job.submitted_at),  # type: ignore[arg-type]
        started_at=whole_seconds(job.started_at),
        finished_at=whole_seconds(job.finished_at),
        error=error,
        main_metric=_main_metric(job),
        model=job.plan.get("model"),
        rounds=_rounds(job),
        isolation=job.isolation,
        version=job.version,
    )


def own_job(store: Store, user: Principal, job_id: str) -> JobRow:
    """The user's job; another user's job and a missing one get the same answer."""
    job = store.get_job(job_id) if len(job_id) <= 64 else None
    if job is None or job.user != user.user:
        raise Refusal("not_found", "no such job")
    return job


def _queue_full(queued: int, retry_after: int) -> Refusal:
    return Refusal(
        "too_many_jobs",
        f"you already have {queued} jobs queued, the most this server accepts; "
        "submit more when some have started",
        headers={"Retry-After": str(retry_after)},
    )


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1e3, 2)


def _parse_spec(text: str) -> DatasetSpec:
    try:
        return DatasetSpec.model_validate_json(text)
    except ValidationError as exc:
        raise Refusal("invalid_spec", spec_error(exc.errors())[:300]) from None


def _check_bounds(settings: Settings, dataset: str, kind: str, report: ScanReport) -> None:
    """Refuse a model beyond the dataset's bounds from the parameters its payload states, before any job
    exists (a Booster's parameters are inside its bytes: the worker checks those)."""
    if report.params is None or report.rounds is None:
        return
    bounds = settings.bounds_for(dataset)
    if kind != "train":  # the leaf rule is about trees trained here
        bounds = bounds.model_copy(update={"min_leaf_rows": None})
    xgboost_bounds.check(xgboost_bounds.plan_of_scan(report.estimator, report.params, report.rounds), bounds)


def _parse_options(text: str | None) -> ReleaseOptions:
    try:
        return ReleaseOptions.model_validate_json(text) if text else ReleaseOptions()
    except ValidationError as exc:
        raise Refusal(
            "invalid_request", f"release option {first_error(exc.errors(), 'release')}"[:300]
        ) from None


@router.post("/jobs", response_model=JobStatus, status_code=202)
async def submit(
    response: Response,
    settings: SettingsDep,
    store: StoreDep,
    scheduler: SchedulerDep,
    audit: AuditDep,
    versions: VersionsDep,
    user: User,
    spec: Annotated[str, Form(description="The dataset spec as JSON.", max_length=100_000)],
    model: Annotated[UploadFile, File(description="The model, pickled with cloudpickle (protocol >= 3).")],
    desk: DeskDep,
    kind: Annotated[JobKind, Form()] = "train",
    release: Annotated[
        str | None, Form(description="ReleaseOptions as JSON: confusion, curve, importance.", max_length=1000)
    ] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobStatus:
    limit = settings.server.max_payload_mb * 2**20
    payload = await model.read(limit + 1)
    if len(payload) > limit:
        raise Refusal("payload_too_large", f"the model is larger than {settings.server.max_payload_mb} MiB")
    parsed, plan = check_spec(settings, versions, user.datasets, _parse_spec(spec))
    max_queued = settings.server.max_queued_per_user
    if (idempotency_key is None or store.job_by_key(user.user, idempotency_key) is None) and (
        store.count_queued(user.user) >= max_queued
    ):
        raise _queue_full(max_queued, scheduler.retry_after())  # before the payload scan: a 429 is cheap
    options = _parse_options(release)
    plan["release"] = options.model_dump()
    plan["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    desk.check_budget(Request(user=user.user, dataset=parsed.dataset, kind=kind, spec={}, options=options))
    state = "queued"
    try:
        report = await asyncio.to_thread(scan, payload, limit)
        plan["model"] = report.model
        check_kind(kind, report.fitted, report.model == "Pipeline")
        _check_bounds(settings, parsed.dataset, kind, report)
    except Refusal as exc:
        if exc.code != "custom_code_refused" or not settings.datasets[parsed.dataset].allow_custom_code:
            raise
        state = "awaiting_approval"
        plan["custom_code"] = await asyncio.to_thread(custom_code_names, payload, limit)
    persisting = time.perf_counter()
    try:
        job, created = await asyncio.to_thread(
            store.create_job,
            user.user,
            parsed.dataset,
            kind,
            parsed.model_dump(mode="json"),
            plan,
            payload,
            idempotency_key,
            state,
            max_queued,
        )
    except QueueFull as full:
        raise _queue_full(full.queued, scheduler.retry_after()) from None
    if created:
        if state == "queued":
            scheduler.notify()
        log.info("job_submitted", extra={"job": job.id, "persist_ms": _ms_since(persisting)})
        audit.record(
            "submit",
            user.user,
            job=job.id,
            dataset=parsed.dataset,
            dataset_version=plan["dataset_version"],
            kind=kind,
            spec=job.spec,
        )
    else:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return status_of(job)


@router.get("/jobs", response_model=JobList)
def list_jobs(
    store: StoreDep,
    user: User,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
) -> JobList:
    return JobList(jobs=[status_of(j) for j in store.list_jobs(user.user, limit, state)])


@router.get("/jobs/{job_id}", response_model=JobStatus)
async def job_status(
    store: StoreDep,
    notifier: NotifierDep,
    user: User,
    job_id: str,
    wait: Annotated[
        float, Query(ge=0, le=MAX_WAIT_S, description="Long-poll: seconds to wait for a change.")
    ] = 0,
    since: Annotated[
        int | None, Query(ge=0, description="The version last seen; wait for a newer one.")
    ] = None,
    final: Annotated[
        bool, Query(description="Long-poll: wait for the job to end, not for any change.")
    ] = False,
) -> JobStatus:
    deadline = time.monotonic() + wait
    while True:
        event = notifier.subscribe(job_id)
        try:
            job = own_job(store, user, job_id)
            if since is None:
                since = job.version
            remaining = deadline - time.monotonic()
            changed = job.version != since and not final
            if job.state in FINAL_STATES or changed or remaining <= 0 or notifier.closing:
                return status_of(job)
            await notifier.wait(event, remaining)
        finally:
            notifier.unsubscribe(job_id, event)


@router.get("/jobs/{job_id}/result", response_model=JobResult)
def job_result(store: StoreDep, user: User, job_id: str) -> JobResult:
    job = own_job(store, user, job_id)
    if job.state == "succeeded" and job.result:
        return JobResult.model_validate(job.result)
    if job.state in ("failed", "cancelled"):
        raise Refusal(job.error_code or "internal_error", job.error_message or "the job failed")
    raise Refusal("not_finished", "the job has not finished yet; wait for it first")


@router.post("/jobs/{job_id}/cancel", response_model=JobStatus)
def cancel(store: StoreDep, scheduler: SchedulerDep, user: User, job_id: str) -> JobStatus:
    job = own_job(store, user, job_id)
    if job.state not in FINAL_STATES:
        scheduler.cancel(job.id)
    return status_of(store.get_job(job.id))  # type: ignore[arg-type]
