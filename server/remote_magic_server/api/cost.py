"""`POST /v1/cost`: what a job would cost in privacy budget and how wide its intervals should be,
before anything is spent (the pre-check of Lomas and of `bq --dry_run`). Free: it reads no row."""

from __future__ import annotations

from fastapi import APIRouter

from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import CostEstimate, CostRequest, curve_problem

from ..intake.catalog import check_spec, version_of
from ..release.desk import Request
from .deps import DeskDep, SettingsDep, User, VersionsDep

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post("/cost", response_model=CostEstimate)
def cost(
    settings: SettingsDep, versions: VersionsDep, desk: DeskDep, user: User, body: CostRequest
) -> CostEstimate:
    refused = curve_problem(body.kind, body.release.curve)
    if refused:
        raise Refusal("invalid_request", refused)
    spec, plan = check_spec(settings, versions, user.datasets, body.spec)
    request = Request(
        user=user.user,
        dataset=spec.dataset,
        kind=body.kind,
        spec=spec.model_dump(mode="json", exclude_none=True),
        options=body.release,
        features=tuple(plan.features),
        dataset_version=plan.dataset_version,
    )
    version = version_of(versions, body.spec.dataset)
    return desk.estimate(request, version.number, version.content_hash, version.rows)
