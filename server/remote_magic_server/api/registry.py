"""The registry resource: registered models, their versions and lineage, aliases, and a version's model
file where it may leave.

Visibility is the registry's (owner, and users the data owner grants): a model you may not see answers
like a missing one. Moving an alias and deleting a version are the owner's. A version the DP trainer
trained is a DP release and downloads at once for whoever may see the version, as its released metrics
do; any other version's model only for its owner, once the data owner approved it (api/models.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from remote_magic.contract.automation_wire import AliasMove, LineageChain, ModelList, ModelVersion
from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import ErrorBody

from ..intake.status import job_release
from .deps import AuditDep, AutomationDep, DeskDep, RegistryDep, StoreDep, User
from .models import released_model

router = APIRouter(prefix="/v1", tags=["registry"])

Ref = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}@[A-Za-z0-9_]{1,64}$",
        description="NAME@N, NAME@latest, NAME@ALIAS.",
    ),
]
Name = Annotated[str, Path(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


@router.get("/models", response_model=ModelList)
def list_models(
    registry: RegistryDep, user: User, name: Annotated[str | None, Query(max_length=64)] = None
) -> ModelList:
    return registry.models(user.user, name)


@router.get("/models/{ref}", response_model=ModelVersion)
def model_version(registry: RegistryDep, user: User, ref: Ref) -> ModelVersion:
    return registry.view(registry.resolve(user.user, ref))


@router.get("/models/{ref}/lineage", response_model=LineageChain)
def lineage(registry: RegistryDep, user: User, ref: Ref) -> LineageChain:
    return registry.lineage(user.user, ref)


@router.get(
    "/models/{ref}/model",
    response_class=Response,
    responses={
        200: {"content": {"application/json": {}}, "description": "The version's model as XGBoost JSON."},
        403: {"model": ErrorBody, "description": "Not released: not a DP model and not approved for you."},
    },
)
def download_version(
    registry: RegistryDep, store: StoreDep, desk: DeskDep, audit: AuditDep, user: User, ref: Ref
) -> Response:
    row = registry.resolve(user.user, ref)
    job = store.get_job(row.job_id)
    if job is None:
        raise Refusal("not_found", "the model file is not available")
    status = job_release(desk, job, store)
    if status.state == "approved" and row.owner != user.user:
        raise Refusal("model_not_released", f"the model of {row.ref} was approved for its owner only")
    path = registry.model_file(row)
    return released_model(status, path, audit, user.user, dataset=row.dataset, version=row.ref)


@router.put("/models/{name}/aliases/{alias}", response_model=ModelVersion)
def move_alias(
    registry: RegistryDep,
    automation: AutomationDep,
    audit: AuditDep,
    user: User,
    name: Name,
    alias: Name,
    move: AliasMove,
) -> ModelVersion:
    registry.owned(user.user, name)
    if alias == "latest":
        raise Refusal("invalid_request", "'latest' is not an alias you can move")
    row = registry.resolve(user.user, f"{name}@{move.version}")
    if registry.store.move_alias(name, alias, row.number) is not None:
        audit.record("alias_moved", user.user, model=name, alias=alias, version=row.number)
        automation.alias_moved(name, alias, row.number)
    return registry.view(row)


@router.delete("/models/{ref}", status_code=204, response_class=Response)
def delete_version(registry: RegistryDep, audit: AuditDep, user: User, ref: Ref) -> Response:
    row = registry.resolve(user.user, ref)
    registry.owned(user.user, row.name)
    registry.store.delete_version(row.name, row.number)
    audit.record("model_version_deleted", user.user, version=row.ref)
    return Response(status_code=204)
