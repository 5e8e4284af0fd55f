"""`POST /v1/describe`: disclosure-checked aggregates of a spec's admitted rows, before any training.

The API checks the spec against the schema exactly as for a job, then hands it to the describer, which
runs a fresh worker and passes its report through the release desk (the same guard and policy as a
training result and, on DP datasets, OpenDP noise under the user's budget). This module never sees a row.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from remote_magic.contract.wire import DatasetSpec, DescribeResult

from ..intake.catalog import check_spec
from .deps import DescriberDep, SettingsDep, User, VersionsDep

router = APIRouter(prefix="/v1", tags=["datasets"])


@router.post("/describe", response_model=DescribeResult)
async def describe(
    settings: SettingsDep, versions: VersionsDep, describer: DescriberDep, user: User, spec: DatasetSpec
) -> DescribeResult:
    """Row count, class balance, missing rates, histograms and category frequencies of a spec. The check
    (parsing the spec's filters and derives, CPU) runs off the event loop too, with the describe."""

    def checked() -> DescribeResult:
        named, plan = check_spec(settings, versions, user.datasets, spec)
        spec_json = named.model_dump(mode="json", exclude_none=True)
        return describer.describe(user.user, named.dataset, spec_json, plan)

    return await asyncio.to_thread(checked)
