"""`GET /v1/jobs/{id}/model`: a trained model, as XGBoost JSON, only once its release is approved.

Release is off unless the dataset allows it; then the scheduler has already checked the leaf sizes
and SACRO-ML's risk rule, and the data owner must approve (`remote-magic-server approve JOB`). Until
then this answers with the state and why, never with the model.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from remote_magic.wire import ErrorBody, ModelReleaseStatus

from .errors import ApiError
from .routes import User, _own_job

router = APIRouter(prefix="/v1")


def release_status(request: Request, job_id: str, dataset: str) -> ModelReleaseStatus:
    state = request.app.state.scheduler.ledger.model_state(job_id)
    if not request.app.state.settings.datasets[dataset].allow_model_release or state is None:
        return ModelReleaseStatus(
            job_id=job_id, state="not_allowed", message="models trained on this dataset stay on the server"
        )
    return ModelReleaseStatus(job_id=job_id, state=state["state"], message=state["message"])


@router.get("/jobs/{job_id}/model/status", response_model=ModelReleaseStatus, tags=["jobs"])
def model_status(request: Request, user: User, job_id: str) -> ModelReleaseStatus:
    job = _own_job(request, user, job_id)
    return release_status(request, job.id, job.dataset)


@router.get(
    "/jobs/{job_id}/model",
    tags=["jobs"],
    response_class=Response,
    responses={
        200: {"content": {"application/json": {}}, "description": "The model as XGBoost JSON."},
        403: {"model": ErrorBody, "description": "Not released: not allowed, refused, or awaiting approval."},
    },
)
def download_model(request: Request, user: User, job_id: str) -> Response:
    job = _own_job(request, user, job_id)
    status = release_status(request, job.id, job.dataset)
    if status.state != "approved":
        messages = {
            "not_allowed": "model release is off for this dataset: models stay on the server",
            "refused": f"this model may not leave the server: {status.message}",
            "awaiting_approval": "the model awaits the data owner's approval; ask them to approve this job",
        }
        raise ApiError(403, "model_not_released", messages[status.state])
    path = request.app.state.store.job_dir(job.id) / "model.json"
    if not path.exists():
        raise ApiError(404, "not_found", "the model file is not available")
    request.app.state.scheduler.audit.record("model_download", user.user, job=job.id, dataset=job.dataset)
    return Response(path.read_bytes(), media_type="application/json")
