"""What the API may know about a dataset: its versions, and each version's schema and rounded row count.

The API process never reads a row: a version's columns, types and row count were recorded in the
versions registry when its snapshot was taken; the roles come from the data owner's config. A spec names
a dataset (`claims`, the latest version) or pins one (`claims@3`); it is checked against that version's
columns by `remote_magic.specs.resolve` (the same check the client's dry run makes), so a bad spec is
refused before it is queued, and the job's plan records the version and the snapshot it will read.
"""

from __future__ import annotations

from remote_magic.contract.codes import Refusal
from remote_magic.contract.specs import class_values, resolve
from remote_magic.contract.types import FEATURE_KINDS, TIME, kind_of
from remote_magic.contract.wire import (
    ColumnInfo,
    DatasetInfo,
    DatasetSpec,
    RetypedColumn,
    SchemaChange,
    VersionInfo,
    dataset_ref,
)

from ..config.settings import DatasetConfig, Settings
from ..data.versions import Version, Versions, schema_change
from ..plan import JobPlan
from ..release.desk import ReleaseDesk

SCHEMA_HASH_CHARS = 16


def role_of(dataset: DatasetConfig, column: str) -> str:
    if column == dataset.id_column:
        return "id"
    if column in dataset.label_columns:
        return "label"
    if column in dataset.exclude_columns:
        return "excluded"
    return "feature"


def granted(settings: Settings, datasets: list[str], ref: str) -> tuple[str, DatasetConfig]:
    """The dataset a reference names, if it exists and the user may use it; one answer otherwise."""
    name, _ = dataset_ref(ref)
    if name not in settings.datasets or name not in datasets:
        raise Refusal("unknown_dataset", f"no dataset named {name!r} is available to you")
    return name, settings.datasets[name]


def unavailable(versions: Versions, name: str) -> str | None:
    """Why no job can use a dataset, for the analyst: it has no version and its last snapshot failed.
    Only that it failed: the reason names the owner's source, so it goes to the server log alone.
    With no attempt recorded yet, the first snapshot is still being taken: None, and a job waits."""
    if versions.latest(name) is not None:
        return None
    last = versions.last_refresh(name)
    if last is None or last["outcome"] != "failed":
        return None
    return (
        f"dataset {name!r} is not available now: the data owner's snapshot of it failed (their server log "
        "says why); ask the data owner"
    )


def version_of(versions: Versions, ref: str) -> Version:
    """The version a reference names: `name@N`, or the latest; raise Refusal if there is none (at once
    when the snapshot failed, as busy while the first one is being taken)."""
    name, number = dataset_ref(ref)
    if number is None:
        latest = versions.latest(name)
        if latest is None:
            why = unavailable(versions, name)
            if why is not None:
                raise Refusal("dataset_snapshot_failed", why)
            raise Refusal("dataset_unavailable", f"dataset {name!r} has no version yet; try again later")
        return latest
    version = versions.get(name, number)
    if version is None:
        served = ", ".join(str(v.number) for v in versions.history(name)) or "none"
        raise Refusal("unknown_version", f"dataset {name!r} has no version {number}; versions: {served}")
    return version


def columns_of(dataset: DatasetConfig, version: Version) -> list[ColumnInfo]:
    return [
        ColumnInfo(name=c, dtype=t, role=role_of(dataset, c), inferred=c in version.inferred)  # type: ignore[arg-type]
        for c, t in version.columns
    ]


def _change(before: Version | None, after: Version) -> SchemaChange | None:
    if before is None:
        return None
    change = schema_change(before.columns, after.columns)
    if not change:
        return None
    return SchemaChange(
        added=change.added,
        dropped=change.dropped,
        retyped=[RetypedColumn(name=c, before=old, after=new) for c, old, new in change.retyped],
    )


def describe_dataset(settings: Settings, desk: ReleaseDesk, versions: Versions, ref: str) -> DatasetInfo:
    """The catalog entry: the named (or latest) version's columns and size, and every version served."""
    name, _ = dataset_ref(ref)
    dataset = settings.datasets[name]
    history = versions.history(name)
    listed = [
        VersionInfo(
            number=v.number,
            created=v.created,
            rows=desk.table_size(name, v.number, v.content_hash, v.rows),
            schema_hash=v.schema_hash[:SCHEMA_HASH_CHARS],
            schema_change=_change(before, v),
        )
        for before, v in zip([None, *history], history)
    ]
    version = version_of(versions, ref) if history or dataset_ref(ref)[1] else None
    return DatasetInfo(
        name=name,
        description=dataset.description,
        rows=desk.table_size(name, version.number, version.content_hash, version.rows) if version else None,
        columns=columns_of(dataset, version) if version else [],
        policy=settings.policy_for(name).in_effect(),
        bounds=settings.bounds_for(name),
        version=version.number if version else None,
        versions=listed,
        unavailable=unavailable(versions, name),
        column_ranges=dataset.column_ranges,
        column_levels=dataset.column_levels,
        label_ranges=dataset.label_ranges,
    )


def check_spec(
    settings: Settings, versions: Versions, datasets: list[str], spec: DatasetSpec
) -> tuple[DatasetSpec, JobPlan]:
    """Check a spec against its dataset version's schema; return the spec naming the dataset alone (the
    version goes into the plan) and the plan the worker needs, or raise Refusal."""
    name, dataset = granted(settings, datasets, spec.dataset)
    version = version_of(versions, spec.dataset)
    resolved = resolve(spec, columns_of(dataset, version), dataset.column_levels)
    plan = JobPlan.of(resolved, version.number, version.content_hash)
    if spec.classes is not None:
        _check_classes(spec.label, spec.classes, dataset.column_levels.get(spec.label), plan.label_dtype)
    return spec.model_copy(update={"dataset": name}), plan


def _check_classes(label: str, classes: list[str], declared: list[str] | None, dtype: str) -> None:
    """A spec's classes name values of the label's type, each once, and, where the data owner declared
    the label's classes, the same ones (the owner's list is the one the job uses)."""
    named = class_values(classes, dtype)
    if declared is not None and named != class_values(declared, dtype):
        raise Refusal(
            "invalid_spec",
            f"the data owner declared the classes of {label!r} (`column_levels.{label}`: {declared}); "
            "leave `classes` out of the spec, or name those",
        )


def unused_columns(settings: Settings, versions: Versions) -> dict[str, list[str]]:
    """Per dataset, the columns no spec can use as features, and why (logged for the owner at start-up)."""
    found: dict[str, list[str]] = {}
    for name, dataset in settings.datasets.items():
        version = versions.latest(name)
        if version is None:
            continue
        reasons = []
        for column in columns_of(dataset, version):
            kind = kind_of(column.dtype)
            if column.role == "feature" and kind == TIME:
                reasons.append(
                    f"{column.name}: holds times; usable through derive (year, month, day, hour ...)"
                )
            elif column.role == "feature" and kind not in FEATURE_KINDS:
                reasons.append(f"{column.name}: holds {column.dtype}, which cannot be a feature")
        if reasons:
            found[name] = reasons
    return found
