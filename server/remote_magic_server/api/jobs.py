"""The jobs resource: submit, list, status (long-poll), result, cancel. Thin: check, persist, hand over."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile
from pydantic import ValidationError

from remote_magic.contract.automation_wire import RegisterRequest
from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import (
    FINAL_STATES,
    JOB_LIST_MAX,
    DatasetSpec,
    JobKind,
    JobList,
    JobResult,
    JobState,
    JobStatus,
    ReleaseOptions,
    curve_problem,
    first_error,
    spec_error,
)

from ..intake.status import status_of
from ..intake.submissions import Submission
from ..jobs.store import JobRow, Store
from ..registry.access import Registry
from ..registry.registrar import asks_registration
from .deps import IntakeDep, NotifierDep, RegistryDep, SchedulerDep, SettingsDep, StoreDep, User
from .principal import Principal

router = APIRouter(prefix="/v1", tags=["jobs"])

MAX_WAIT_S = 60.0


def own_job(store: Store, user: Principal, job_id: str) -> JobRow:
    """The user's job; another user's job and a missing one get the same answer."""
    job = store.get_job(job_id) if len(job_id) <= 64 else None
    if job is None or job.user != user.user:
        raise Refusal("not_found", "no such job")
    return job


def _parse_spec(text: str) -> DatasetSpec:
    try:
        return DatasetSpec.model_validate_json(text)
    except ValidationError as exc:
        raise Refusal("invalid_spec", spec_error(exc.errors())[:300]) from None


def _parse_register(text: str | None) -> RegisterRequest | None:
    if text is None:
        return None
    try:
        return RegisterRequest.model_validate_json(text)
    except ValidationError as exc:
        raise Refusal(
            "invalid_request", f"register field {first_error(exc.errors(), 'register')}"[:300]
        ) from None


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
    intake: IntakeDep,
    registry: RegistryDep,
    scheduler: SchedulerDep,
    user: User,
    spec: Annotated[str, Form(description="The dataset spec as JSON.", max_length=100_000)],
    model: Annotated[
        UploadFile | None,
        File(description="The model, pickled with cloudpickle (protocol >= 3); optional with base_model."),
    ] = None,
    kind: Annotated[JobKind, Form()] = "train",
    register_as: Annotated[
        str | None, Form(description="RegisterRequest as JSON: register the trained model.", max_length=2000)
    ] = None,
    base_model: Annotated[
        str | None,
        Form(
            description="A registered version to continue or evaluate: NAME@N, NAME@latest, NAME@ALIAS.",
            max_length=200,
        ),
    ] = None,
    release: Annotated[
        str | None, Form(description="ReleaseOptions as JSON: confusion, curve, importance.", max_length=1000)
    ] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobStatus:
    limit = settings.server.max_payload_mb * 2**20
    payload = await model.read(limit + 1) if model is not None else b""
    if len(payload) > limit:
        raise Refusal("payload_too_large", f"the model is larger than {settings.server.max_payload_mb} MiB")
    options = _parse_options(release)
    refused = curve_problem(kind, options.curve)
    if refused:
        raise Refusal("invalid_request", refused)
    submission = Submission(
        user=user.user,
        datasets=user.datasets,
        spec=_parse_spec(spec),
        payload=payload,
        kind=kind,
        idempotency_key=idempotency_key,
        register=_parse_register(register_as),
        base_model=base_model,
        release=options,
    )
    job, created = await asyncio.to_thread(intake.accept, submission)
    if created:
        if job.state == "queued":
            scheduler.notify()
    else:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return status_of(job, registry)


@router.get("/jobs", response_model=JobList)
def list_jobs(
    store: StoreDep,
    registry: RegistryDep,
    user: User,
    limit: Annotated[int, Query(ge=1, le=JOB_LIST_MAX)] = 100,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
) -> JobList:
    return JobList(jobs=[status_of(j, registry) for j in store.list_jobs(user.user, limit, state)])


@router.get("/jobs/{job_id}", response_model=JobStatus)
async def job_status(
    store: StoreDep,
    registry: RegistryDep,
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
    result: Annotated[
        bool, Query(description="With the status of a job that succeeded, its released result.")
    ] = False,
) -> JobStatus:
    deadline = time.monotonic() + wait
    while True:  # each wake-up reads the job's state only; the whole row once, to answer
        event = notifier.subscribe(job_id)
        try:
            state, version = _own_state(store, user, job_id)
            if since is None:
                since = version
            remaining = deadline - time.monotonic()
            ended = state in FINAL_STATES and _settled(store, registry, job_id, state)
            changed = version != since and not final and (ended or state not in FINAL_STATES)
            if ended or changed or remaining <= 0 or notifier.closing:
                break
            await notifier.wait(event, remaining)
        finally:
            notifier.unsubscribe(job_id, event)
    job = own_job(store, user, job_id)
    status = status_of(job, registry)
    if result and job.state == "succeeded" and job.result:
        status.result = JobResult.model_validate(job.result)
    return status


def _settled(store: Store, registry: Registry, job_id: str, state: str) -> bool:
    """Whether an ended job's registration, if it asked for one, is recorded too. The hand-over registers
    right after the final state is stored and then wakes the long-polls, so a waiting cell learns both at
    once (it says what became of `register`); a hand-over that failed is answered at the wait's end."""
    if state != "succeeded":
        return True
    job = store.get_job(job_id)
    return job is None or not asks_registration(job) or registry.store.outcome(job_id) is not None


def _own_state(store: Store, user: Principal, job_id: str) -> tuple[str, int]:
    """The state and version of the user's job, answered as `own_job` answers."""
    found = store.peek(job_id) if len(job_id) <= 64 else None
    if found is None or found[0] != user.user:
        raise Refusal("not_found", "no such job")
    return found[1], found[2]


@router.get("/jobs/{job_id}/result", response_model=JobResult)
def job_result(store: StoreDep, user: User, job_id: str) -> JobResult:
    job = own_job(store, user, job_id)
    if job.state == "succeeded" and job.result:
        return JobResult.model_validate(job.result)
    if job.state in ("failed", "cancelled"):
        raise Refusal(job.error_code or "internal_error", job.error_message or "the job failed")
    raise Refusal("not_finished", "the job has not finished yet; wait for it first")


@router.post("/jobs/{job_id}/cancel", response_model=JobStatus)
def cancel(
    store: StoreDep, registry: RegistryDep, scheduler: SchedulerDep, user: User, job_id: str
) -> JobStatus:
    job = own_job(store, user, job_id)
    if job.state not in FINAL_STATES:
        scheduler.cancel(job.id)
    return status_of(store.get_job(job.id), registry)  # type: ignore[arg-type]
