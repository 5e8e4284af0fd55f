"""`GET /v1/jobs/{id}/model`: a trained model, as XGBoost JSON, only once its release is approved.

Release is off unless the dataset allows it; then the scheduler has already checked the leaf sizes
and SACRO-ML's risk rule, and the data owner must approve (`remote-magic-server approve JOB`). Until
then this answers with the state and why, never with the model.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import ErrorBody, ModelReleaseStatus
from remote_magic.families import MODEL_FILE

from ..config.settings import Settings
from ..release.desk import ReleaseDesk
from .deps import AuditDep, DeskDep, SettingsDep, StoreDep, User
from .jobs import own_job

router = APIRouter(prefix="/v1", tags=["jobs"])


def release_status(settings: Settings, desk: ReleaseDesk, job_id: str, dataset: str) -> ModelReleaseStatus:
    state = desk.ledger.model_state(job_id)
    if not settings.datasets[dataset].allow_model_release or state is None:
        return ModelReleaseStatus(
            job_id=job_id, state="not_allowed", message="models trained on this dataset stay on the server"
        )
    return ModelReleaseStatus(job_id=job_id, state=state["state"], message=state["message"])


@router.get("/jobs/{job_id}/model/status", response_model=ModelReleaseStatus)
def model_status(
    settings: SettingsDep, store: StoreDep, desk: DeskDep, user: User, job_id: str
) -> ModelReleaseStatus:
    job = own_job(store, user, job_id)
    return release_status(settings, desk, job.id, job.dataset)


@router.get(
    "/jobs/{job_id}/model",
    response_class=Response,
    responses={
        200: {"content": {"application/json": {}}, "description": "The model as XGBoost JSON."},
        403: {"model": ErrorBody, "description": "Not released: not allowed, refused, or awaiting approval."},
    },
)
def download_model(
    settings: SettingsDep, store: StoreDep, desk: DeskDep, audit: AuditDep, user: User, job_id: str
) -> Response:
    job = own_job(store, user, job_id)
    status = release_status(settings, desk, job.id, job.dataset)
    if status.state != "approved":
        messages = {
            "not_allowed": "model release is off for this dataset: models stay on the server",
            "refused": f"this model may not leave the server: {status.message}",
            "awaiting_approval": "the model awaits the data owner's approval; ask them to approve this job",
        }
        raise Refusal("model_not_released", messages[status.state])
    path = store.job_dir(job.id) / MODEL_FILE
    if not path.exists():
        raise Refusal("not_found", "the model file is not available")
    audit.record("model_download", user.user, job=job.id, dataset=job.dataset)
    return Response(path.read_bytes(), media_type="application/json")
