"""What the API may know about a dataset: its schema and rounded row count, from Parquet metadata only.

The API process never reads a row: the schema and the row count come from the file footer, the roles
from the data owner's config. A spec is checked against them by `remote_magic.specs.resolve` (the same
check the client's dry run makes), so a bad spec is refused before it is queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow.parquet as pq

from remote_magic.codes import Refusal
from remote_magic.specs import Resolved, resolve
from remote_magic.wire import ColumnInfo, DatasetInfo, DatasetSpec

from ..release.desk import ReleaseDesk
from ..settings import DatasetConfig, Settings


@dataclass(frozen=True)
class Schema:
    columns: tuple[tuple[str, str], ...]
    rows: int


@lru_cache(maxsize=64)
def _read_schema(path: Path, mtime: float) -> Schema:
    meta = pq.read_metadata(path)
    schema = meta.schema.to_arrow_schema()
    return Schema(columns=tuple((f.name, str(f.type)) for f in schema), rows=meta.num_rows)


def schema_of(dataset: DatasetConfig) -> Schema:
    return _read_schema(dataset.path, dataset.path.stat().st_mtime)


def role_of(dataset: DatasetConfig, column: str) -> str:
    if column == dataset.id_column:
        return "id"
    if column in dataset.label_columns:
        return "label"
    if column in dataset.exclude_columns:
        return "excluded"
    return "feature"


def columns_of(dataset: DatasetConfig) -> list[ColumnInfo]:
    return [
        ColumnInfo(name=c, dtype=t, role=role_of(dataset, c))  # type: ignore[arg-type]
        for c, t in schema_of(dataset).columns
    ]


def describe_dataset(settings: Settings, desk: ReleaseDesk, name: str) -> DatasetInfo:
    dataset = settings.datasets[name]
    return DatasetInfo(
        name=name,
        description=dataset.description,
        rows=desk.table_size(name, schema_of(dataset).rows),
        columns=columns_of(dataset),
        policy=settings.policy_for(name).in_effect(),
        bounds=settings.bounds_for(name),
    )


def granted(settings: Settings, datasets: list[str], name: str) -> DatasetConfig:
    """The dataset, if it exists and the user may use it; the same answer for both cases otherwise."""
    if name not in settings.datasets or name not in datasets:
        raise Refusal("unknown_dataset", f"no dataset named {name!r} is available to you")
    return settings.datasets[name]


def plan_of(resolved: Resolved) -> dict:
    """What the scheduler keeps of a resolved spec with the job (the worker's staging plan)."""
    return {
        "features": resolved.features,
        "filter_columns": resolved.filter_columns,
        "derive_columns": resolved.derive_columns,
    }


def check_spec(settings: Settings, datasets: list[str], spec: DatasetSpec) -> dict:
    """Check a spec against the dataset's schema; return the plan the worker needs, or raise Refusal."""
    return plan_of(resolve(spec, columns_of(granted(settings, datasets, spec.dataset))))
