"""`POST /v1/describe`: disclosure-checked aggregates of a spec's admitted rows, before any training.

The API checks the spec against the schema exactly as for a job, then hands it to the scheduler, which
runs a fresh worker and passes its report through the same guard and policy as a training result (and,
on DP datasets, OpenDP noise under the user's budget). This module never sees a row.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from remote_magic.wire import DatasetSpec, DescribeResult

from ..jobs.scheduler import DescribeFailed
from .catalog import SpecRefused, resolve
from .errors import ApiError
from .routes import User

router = APIRouter(prefix="/v1")


@router.post("/describe", response_model=DescribeResult, tags=["datasets"])
async def describe(request: Request, user: User, spec: DatasetSpec) -> DescribeResult:
    """Row count, class balance, missing rates, histograms and category frequencies of a spec."""
    settings = request.app.state.settings
    try:
        plan = resolve(settings, user.datasets, spec)
    except SpecRefused as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    scheduler = request.app.state.scheduler
    spec_json = spec.model_dump(mode="json", exclude_none=True)
    try:
        answer = await asyncio.to_thread(scheduler.describe, user.user, spec.dataset, spec_json, plan)
    except DescribeFailed as failure:
        status = 500 if failure.code == "internal_error" else 422
        raise ApiError(status, failure.code, failure.message) from None
    return DescribeResult.model_validate(answer)
