"""`POST /v1/cost`: what a job would cost in privacy budget and how wide its intervals should be,
before anything is spent (the pre-check of Lomas and of `bq --dry_run`). Free: it reads no row."""

from __future__ import annotations

from fastapi import APIRouter

from remote_magic.wire import CostEstimate, CostRequest

from ..release.desk import Request
from .catalog import check_spec, schema_of
from .deps import DeskDep, SettingsDep, User

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post("/cost", response_model=CostEstimate)
def cost(settings: SettingsDep, desk: DeskDep, user: User, body: CostRequest) -> CostEstimate:
    check_spec(settings, user.datasets, body.spec)
    request = Request(
        user=user.user,
        dataset=body.spec.dataset,
        kind=body.kind,
        spec=body.spec.model_dump(mode="json", exclude_none=True),
        options=body.release,
    )
    return desk.estimate(request, schema_of(settings.datasets[body.spec.dataset]).rows)
