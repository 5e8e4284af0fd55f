"""The datasets resource: the catalog of datasets a token grants (versions, schema, rounded size, rules
in effect)."""

from __future__ import annotations

from fastapi import APIRouter

from remote_magic.contract.wire import DatasetInfo

from ..intake.catalog import describe_dataset, granted
from .deps import DeskDep, SettingsDep, User, VersionsDep

router = APIRouter(prefix="/v1", tags=["datasets"])


@router.get("/datasets", response_model=list[DatasetInfo])
def datasets(settings: SettingsDep, desk: DeskDep, versions: VersionsDep, user: User) -> list[DatasetInfo]:
    return [
        describe_dataset(settings, desk, versions, name)
        for name in settings.datasets
        if name in user.datasets
    ]


@router.get("/datasets/{name}", response_model=DatasetInfo)
def dataset(
    settings: SettingsDep, desk: DeskDep, versions: VersionsDep, user: User, name: str
) -> DatasetInfo:
    """One dataset; `NAME@N` gives version N's columns and size instead of the latest's."""
    granted(settings, user.datasets, name)
    return describe_dataset(settings, desk, versions, name)
