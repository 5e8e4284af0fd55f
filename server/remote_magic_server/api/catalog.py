"""What the API may know about a dataset: its schema and rounded row count, from Parquet metadata only.

The API process never reads a row: the schema and the row count come from the file footer. Spec checks
against the schema (columns, roles, filter grammar) happen here, so a bad spec is refused before it is
queued, with a message that names the column and its nearest valid neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow.parquet as pq

from remote_magic.wire import ColumnInfo, DatasetInfo, DatasetSpec, unknown_column_message

from ..grammar import FilterError, check_derive, parse_filter
from ..privacy.policy import release_count
from ..settings import DatasetConfig, Settings


class SpecRefused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


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


def describe_dataset(settings: Settings, name: str) -> DatasetInfo:
    dataset = settings.datasets[name]
    schema = schema_of(dataset)
    policy = settings.policy_for(name).model_dump()
    return DatasetInfo(
        name=name,
        description=dataset.description,
        rows=release_count(schema.rows, policy),
        columns=[ColumnInfo(name=c, dtype=t, role=role_of(dataset, c)) for c, t in schema.columns],
    )


def resolve(settings: Settings, granted: list[str], spec: DatasetSpec) -> dict:
    """Check a spec against the dataset's schema; return the plan the worker needs."""
    if spec.dataset not in settings.datasets or spec.dataset not in granted:
        raise SpecRefused(404, "unknown_dataset", f"no dataset named {spec.dataset!r} is available to you")
    dataset = settings.datasets[spec.dataset]
    columns = [c for c, _ in schema_of(dataset).columns]
    roles = {c: role_of(dataset, c) for c in columns}
    usable = [c for c in columns if roles[c] in ("feature", "label")]
    if spec.label not in roles:
        raise SpecRefused(422, "unknown_column", unknown_column_message(spec.label, usable, "label"))
    if roles[spec.label] != "label":
        labels = ", ".join(repr(c) for c in dataset.label_columns)
        raise SpecRefused(422, "invalid_spec", f"{spec.label!r} is not a label column; labels: {labels}")
    if spec.features is None:
        features = [c for c in columns if roles[c] == "feature"]
    else:
        features = []
        for name in spec.features:
            if name not in roles:
                raise SpecRefused(422, "unknown_column", unknown_column_message(name, usable, "features"))
            if roles[name] != "feature":
                raise SpecRefused(422, "invalid_spec", f"column {name!r} cannot be used as a feature")
            if name not in features:
                features.append(name)
    if not features:
        raise SpecRefused(422, "invalid_spec", "the spec selects no features")
    for text in (spec.where, getattr(spec.eval, "where", None)):
        if text is None:
            continue
        try:
            parse_filter(text, usable)
        except FilterError as exc:
            raise SpecRefused(422, exc.code, exc.message) from exc
    derive_columns = [c for c in columns if roles[c] == "feature"]
    if spec.derive:
        try:
            check_derive(spec.derive, derive_columns, columns)
        except FilterError as exc:
            raise SpecRefused(422, exc.code, exc.message) from exc
    return {"features": features, "filter_columns": usable, "derive_columns": derive_columns}
