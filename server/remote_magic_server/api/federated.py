"""`POST /v1/federated/sums`: one batch of a federated DP training, answered with this server's own noisy
per-leaf sums of its training rows (before the first batch, `POST /v1/federated/sketch`: its noisy counts over
public grids, for the training's candidates) (intake/federated.py checks the request, jobs/oneshot.py runs
it in a confined worker, the release desk charges and noises it), its final evaluation from the training's
session (released as an evaluate job's result), and the end of a training, which drops its session
(jobs/sessions.py). This module never sees a row; its checks (parsing the spec, reading the model so far)
run off the event loop, with the work."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Response

from remote_magic.contract.wire import (
    TRAINING_ID,
    DatasetSpec,
    FederatedEvaluateRequest,
    FederatedSketch,
    FederatedSketchRequest,
    FederatedStepRequest,
    FederatedSums,
    JobResult,
)

from ..intake.federated import check_evaluation, check_sketch, check_step
from .deps import FederatedDep, SettingsDep, User, VersionsDep

router = APIRouter(prefix="/v1", tags=["federated"])


def _json(spec: DatasetSpec) -> dict:
    return spec.model_dump(mode="json", exclude_none=True)


@router.post("/federated/sketch", response_model=FederatedSketch)
async def federated_sketch(
    settings: SettingsDep,
    versions: VersionsDep,
    steps: FederatedDep,
    user: User,
    body: FederatedSketchRequest,
) -> FederatedSketch:
    """Before a training's first batch: this server's noisy counts of its training rows over the fine
    grids of public ranges, whose quantiles (added up over the servers) are the training's candidates."""

    def checked() -> FederatedSketch:
        spec, plan, order = check_sketch(settings, versions, user.datasets, body)
        return steps.sketch(user.user, spec.dataset, _json(spec), plan, order, body.training)

    return await asyncio.to_thread(checked)


@router.post("/federated/sums", response_model=FederatedSums)
async def federated_sums(
    settings: SettingsDep,
    versions: VersionsDep,
    steps: FederatedDep,
    user: User,
    body: FederatedStepRequest,
) -> FederatedSums:
    """This server's noisy gradient and hessian sums per leaf of one batch of trees, charged to the user."""

    def checked() -> FederatedSums:
        spec, plan, order, model = check_step(settings, versions, user.datasets, body)
        return steps.step(user.user, spec.dataset, _json(spec), plan, order, model, body.training)

    return await asyncio.to_thread(checked)


@router.post("/federated/evaluate", response_model=JobResult)
async def federated_evaluate(
    settings: SettingsDep,
    versions: VersionsDep,
    steps: FederatedDep,
    user: User,
    body: FederatedEvaluateRequest,
) -> JobResult:
    """The final model on this server's evaluation rows, from the training's session, released and charged
    as an evaluate job's result; the session ends."""

    def checked() -> JobResult:
        spec, plan, order = check_evaluation(settings, versions, user.datasets, body)
        return steps.evaluate(user.user, spec.dataset, _json(spec), plan, order, body.training)

    return await asyncio.to_thread(checked)


@router.delete("/federated/sessions/{training}", status_code=204, response_class=Response)
async def end_training(
    steps: FederatedDep, user: User, training: Annotated[str, Path(pattern=TRAINING_ID)]
) -> Response:
    """Drop your training's session here (its staged rows and margins): its last step is done. Nothing is
    charged; a training with no session here (never started, or dropped already) is no error."""
    await asyncio.to_thread(steps.end, user.user, training)
    return Response(status_code=204)
