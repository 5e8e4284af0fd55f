"""The /v1 HTTP resources: health, whoami, datasets, jobs. Thin: check, persist, hand over."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, Response, UploadFile
from pydantic import ValidationError

from remote_magic import __version__
from remote_magic.wire import (
    FINAL_STATES,
    DatasetInfo,
    DatasetSpec,
    ErrorDetail,
    Health,
    JobKind,
    JobList,
    JobResult,
    JobState,
    JobStatus,
    MetricPoint,
    Progress,
    Whoami,
    first_error,
)

from ..jobs.store import JobRow, QueueFull
from ..payload import PayloadError, custom_code_names, scan
from .auth import Principal, current_user
from .catalog import SpecRefused, describe_dataset, resolve
from .errors import ApiError

router = APIRouter(prefix="/v1")
User = Annotated[Principal, Depends(current_user)]

MAIN_METRICS = ("auc", "accuracy", "r2", "rmse", "log_loss")
MAX_WAIT_S = 60.0
RETRY_AFTER_S = 5


def _main_metric(job: JobRow) -> MetricPoint | None:
    if not job.result:
        return None
    metrics = job.result.get("metrics", {})
    for name in MAIN_METRICS:
        if name in metrics:
            return MetricPoint(name=name, eval=metrics[name])
    return None


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
        kind=job.kind,  # type: ignore[arg-type]
        state=job.state,  # type: ignore[arg-type]
        progress=Progress.model_validate(job.progress),
        submitted_at=job.submitted_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=error,
        main_metric=_main_metric(job),
        model=job.plan.get("model"),
        rounds=_rounds(job),
        isolation=job.isolation,
        version=job.version,
    )


def _own_job(request: Request, user: Principal, job_id: str) -> JobRow:
    job = request.app.state.store.get_job(job_id) if len(job_id) <= 64 else None
    if job is None or job.user != user.user:
        raise ApiError(404, "not_found", "no such job")
    return job


@router.get("/health", response_model=Health, tags=["server"])
def health(request: Request) -> Health:
    store_ok = request.app.state.store.ping()
    counts = request.app.state.store.count_by_state() if store_ok else {}
    scheduler = request.app.state.scheduler.state
    return Health(
        status="ok" if store_ok and scheduler == "running" else "degraded",
        version=__version__,
        store="ok" if store_ok else "error",
        workers=request.app.state.settings.worker_count,
        running=request.app.state.scheduler.running_count(),
        queued=counts.get("queued", 0),
        scheduler=scheduler,
    )


@router.get("/whoami", response_model=Whoami, tags=["server"])
def whoami(user: User) -> Whoami:
    return Whoami(user=user.user, datasets=user.datasets)


def _granted(request: Request, user: Principal) -> list[str]:
    return [name for name in request.app.state.settings.datasets if name in user.datasets]


@router.get("/datasets", response_model=list[DatasetInfo], tags=["datasets"])
def datasets(request: Request, user: User) -> list[DatasetInfo]:
    return [describe_dataset(request.app.state.settings, name) for name in _granted(request, user)]


@router.get("/datasets/{name}", response_model=DatasetInfo, tags=["datasets"])
def dataset(request: Request, user: User, name: str) -> DatasetInfo:
    if name not in _granted(request, user):
        raise ApiError(404, "unknown_dataset", "no such dataset is available to you")
    return describe_dataset(request.app.state.settings, name)


def _parse_spec(text: str) -> DatasetSpec:
    try:
        return DatasetSpec.model_validate_json(text)
    except ValidationError as exc:
        raise ApiError(422, "invalid_spec", f"spec field {first_error(exc.errors(), 'spec')}"[:300]) from None


@router.post("/jobs", response_model=JobStatus, status_code=202, tags=["jobs"])
async def submit(
    request: Request,
    response: Response,
    user: User,
    spec: Annotated[str, Form(description="The dataset spec as JSON.", max_length=100_000)],
    model: Annotated[UploadFile, File(description="The model, pickled with cloudpickle (protocol >= 3).")],
    kind: Annotated[JobKind, Form()] = "train",
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobStatus:
    settings = request.app.state.settings
    limit = settings.server.max_payload_mb * 2**20
    payload = await model.read(limit + 1)
    if len(payload) > limit:
        raise ApiError(
            413, "payload_too_large", f"the model is larger than {settings.server.max_payload_mb} MiB"
        )
    parsed = _parse_spec(spec)
    try:
        plan = resolve(settings, user.datasets, parsed)
    except SpecRefused as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    state = "queued"
    try:
        plan["model"] = (await asyncio.to_thread(scan, payload, limit)).model
    except PayloadError as exc:
        if exc.code != "custom_code_refused" or not settings.datasets[parsed.dataset].allow_custom_code:
            raise ApiError(422, exc.code, exc.message) from None
        state = "awaiting_approval"
        plan["custom_code"] = await asyncio.to_thread(custom_code_names, payload, limit)
    store = request.app.state.store
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
            settings.server.max_queued_per_user,
        )
    except QueueFull as full:
        raise ApiError(
            429,
            "too_many_jobs",
            f"you already have {full.queued} jobs queued, the most this server accepts; "
            "submit more when some have started",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    if created:
        request.app.state.scheduler.audit.record(
            "submit", user.user, job=job.id, dataset=parsed.dataset, kind=kind, spec=job.spec
        )
        if state == "queued":
            request.app.state.scheduler.notify()
    else:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return status_of(job)


@router.get("/jobs", response_model=JobList, tags=["jobs"])
def list_jobs(
    request: Request,
    user: User,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
) -> JobList:
    jobs = request.app.state.store.list_jobs(user.user, limit, state)
    return JobList(jobs=[status_of(j) for j in jobs])


@router.get("/jobs/{job_id}", response_model=JobStatus, tags=["jobs"])
async def job_status(
    request: Request,
    user: User,
    job_id: str,
    wait: Annotated[
        float, Query(ge=0, le=MAX_WAIT_S, description="Long-poll: seconds to wait for a change.")
    ] = 0,
    since: Annotated[
        int | None, Query(ge=0, description="The version last seen; wait for a newer one.")
    ] = None,
) -> JobStatus:
    notifier = request.app.state.notifier
    deadline = time.monotonic() + wait
    while True:
        event = notifier.subscribe(job_id)
        try:
            job = _own_job(request, user, job_id)
            if since is None:
                since = job.version
            remaining = deadline - time.monotonic()
            if job.state in FINAL_STATES or job.version != since or remaining <= 0 or notifier.closing:
                return status_of(job)
            await notifier.wait(event, remaining)
        finally:
            notifier.unsubscribe(job_id, event)


@router.get("/jobs/{job_id}/result", response_model=JobResult, tags=["jobs"])
def job_result(request: Request, user: User, job_id: str) -> JobResult:
    job = _own_job(request, user, job_id)
    if job.state == "succeeded" and job.result:
        return JobResult.model_validate(job.result)
    if job.state in ("failed", "cancelled"):
        raise ApiError(422, job.error_code or "job_failed", job.error_message or "the job failed")
    raise ApiError(409, "not_finished", "the job has not finished yet; wait for it first")


@router.post("/jobs/{job_id}/cancel", response_model=JobStatus, tags=["jobs"])
def cancel(request: Request, user: User, job_id: str) -> JobStatus:
    job = _own_job(request, user, job_id)
    if job.state not in FINAL_STATES:
        request.app.state.scheduler.cancel(job.id)
    return status_of(request.app.state.store.get_job(job.id))
