"""`GET /v1/jobs/{id}/model`: a trained model, as XGBoost JSON, when it may leave.

A model the DP trainer trained (its result carries `training`) is a DP release: it answers at once, to
the job's owner, whatever the dataset's `allow_model_release` says, and costs nothing more. Any other
model leaves only where the dataset allows release; then the scheduler has already checked the leaf
sizes and SACRO-ML's risk rule, and the data owner must approve (`remote-magic-server approve JOB`).
Until then this answers with the state and why, never with the model. The release desk decides
(`ReleaseDesk.model_release`); the registry's download (api/registry.py) asks it the same way.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response

from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import FINAL_STATES, ErrorBody, ModelReleaseStatus
from remote_magic.families import MODEL_FILE

from ..audit import AuditLog
from ..intake.status import job_release
from ..jobs.store import JobRow
from .deps import AuditDep, DeskDep, StoreDep, User
from .jobs import own_job

router = APIRouter(prefix="/v1", tags=["jobs"])

NOT_RELEASED = {
    "not_allowed": "{message}",
    "refused": "this model may not leave the server: {message}",
    "awaiting_approval": (
        "the model awaits the data owner's approval; ask them to approve it "
        "(remote-magic-server approve {job})"
    ),
}


def finished(job: JobRow) -> JobRow:
    """The job, once it has ended; its model's release is decided only then."""
    if job.state not in FINAL_STATES:
        raise Refusal("not_finished", "the job has not finished yet; wait for it first")
    return job


def released_model(
    status: ModelReleaseStatus, path: Path, audit: AuditLog, user: str, **where: object
) -> Response:
    """The model file as the answer, once released (`dp_model` or `approved`), with the download in the
    audit log; a refusal saying why otherwise."""
    if status.state not in ("dp_model", "approved"):
        said = NOT_RELEASED[status.state].format(message=status.message, job=status.job_id)
        raise Refusal("model_not_released", said)
    if not path.exists():
        raise Refusal("not_found", "the model file is not available")
    audit.record("model_download", user, job=status.job_id, release=status.state, **where)
    return Response(path.read_bytes(), media_type="application/json")


@router.get("/jobs/{job_id}/model/status", response_model=ModelReleaseStatus)
def model_status(store: StoreDep, desk: DeskDep, user: User, job_id: str) -> ModelReleaseStatus:
    return job_release(desk, finished(own_job(store, user, job_id)), store)


@router.get(
    "/jobs/{job_id}/model",
    response_class=Response,
    responses={
        200: {"content": {"application/json": {}}, "description": "The model as XGBoost JSON."},
        403: {"model": ErrorBody, "description": "Not released: not allowed, refused, or awaiting approval."},
        409: {"model": ErrorBody, "description": "The job has not finished."},
    },
)
def download_model(store: StoreDep, desk: DeskDep, audit: AuditDep, user: User, job_id: str) -> Response:
    job = finished(own_job(store, user, job_id))
    status = job_release(desk, job, store)
    return released_model(status, store.job_dir(job.id) / MODEL_FILE, audit, user.user, dataset=job.dataset)
