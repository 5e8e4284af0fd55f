"""Build the task a worker receives from a job (or a describe or review request) and the config.

One builder for every kind, so limits, bounds and the staging plan are set the same way everywhere.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pyarrow.parquet as pq
from sqlglot import exp

from remote_magic.contract.codes import Refusal
from remote_magic.contract.query import missing_label_query, staging_query
from remote_magic.contract.wire import DatasetSpec

from ..config.settings import DatasetConfig, Policy, Settings
from ..data.versions import Versions, snapshot_file
from ..plan import JobPlan
from ..protocol import (
    PARTITION_TABLE,
    DescribeOptions,
    FederatedOrder,
    Limits,
    PrivateTraining,
    SavedModel,
    Staging,
    Task,
    TaskKind,
)

CPU_SLACK_S = 30
BASE_MODEL_FILE = "base.json"
REVIEW_CPU_S = 30
REVIEW_MEMORY_MB = 2048
DEFAULT_FILE_MB = 1024


@functools.lru_cache(maxsize=256)
def _footer(snapshot: str) -> tuple[int, int | None]:
    """A snapshot's data uncompressed, in MiB, and its rows (from its Parquet footer; snapshots never
    change, so read once). (0, None) for a footer that cannot be read: the worker that reads the file
    meets that as a job failure."""
    try:
        meta = pq.read_metadata(snapshot)
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        return 0, None
    uncompressed = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return uncompressed // 2**20 + 1, meta.num_rows


def file_limit_mb(snapshot: str, worker_memory_mb: int) -> int:
    """The largest file a job may write: its spilled rows and its external-memory pages (XGBoost's bin
    index of every training row, one file, up to about the table's own size) grow with the table, not
    with the worker's memory; twice the table, and never less than the worker's memory."""
    return max(DEFAULT_FILE_MB, worker_memory_mb, 2 * _footer(snapshot)[0])


def _snapshot(settings: Settings, dataset: str, plan: JobPlan) -> Path:
    """The immutable snapshot of the dataset version the plan names: the only file a worker reads."""
    content_hash = plan.snapshot
    if content_hash is None:  # queued by a server that had no dataset versions: the latest one
        latest = Versions(settings.snapshots_dir).latest(dataset)
        content_hash = latest.content_hash if latest else ""
    path = snapshot_file(settings.snapshots_dir, dataset, content_hash)
    if not content_hash or not path.exists():
        raise Refusal(
            "unknown_version",
            f"version {plan.dataset_version} of dataset {dataset!r} was pruned before the job ran",
        )
    return path


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU a worker could open (its device files), without loading
    any GPU library in the server process."""
    return bool(list(Path("/dev").glob("nvidia[0-9]*"))) and Path("/dev/nvidiactl").exists()


def build_task(
    settings: Settings,
    kind: TaskKind,
    dataset: str | None = None,
    spec: dict | None = None,
    plan: JobPlan | None = None,
    federated: FederatedOrder | None = None,
) -> Task:
    """The task for a job of `kind` on `dataset` with its spec and the plan the API resolved (`federated`:
    a sums task's order; its rows are staged and split as a train job's)."""
    server = settings.server
    if kind == "review":
        limits = Limits(
            threads=1,
            cpu_seconds=REVIEW_CPU_S,
            memory_mb=REVIEW_MEMORY_MB,
            max_payload_bytes=server.max_payload_mb * 2**20,
            sandbox_uid=server.sandbox_uid,
            sandbox_gid=server.sandbox_gid,
        )
        return Task(kind="review", limits=limits)
    assert dataset is not None and spec is not None and plan is not None
    config = settings.datasets[dataset]
    policy = settings.policy_for(dataset)
    threads = settings.threads_per_job(policy)
    snapshot = str(_snapshot(settings, dataset, plan))
    limits = Limits(
        threads=threads,
        cpu_seconds=policy.job_timeout_s * threads + CPU_SLACK_S,
        memory_mb=policy.worker_memory_mb,
        staging_mb=policy.staging_budget_mb,
        file_mb=file_limit_mb(snapshot, policy.worker_memory_mb),
        gpu="cuda" in policy.devices and gpu_present(),
        max_payload_bytes=0 if kind == "describe" else server.max_payload_mb * 2**20,
        sandbox_uid=server.sandbox_uid,
        sandbox_gid=server.sandbox_gid,
    )
    # A model the DP trainer makes is a DP release: what its leaves and predictions set apart is
    # post-processing of noisy sums, read by no rule, so its report counts none of it (no pass over
    # the admitted rows for it).
    dp_trained = kind == "train" and policy.trains_privately
    checked = DatasetSpec.model_validate(spec)
    if kind == "describe":
        checked = checked.model_copy(update={"eval": None})
    return Task(
        kind=kind,
        spec=checked,
        staging=staging_plan(
            checked,
            "train" if kind == "sums" else kind,
            snapshot,
            config.id_column,
            plan,
            config.column_levels.get(checked.label, checked.classes),
        ),
        bounds=settings.bounds_for(dataset).for_kind(kind),
        limits=limits,
        model_facts=kind == "train" and config.allow_model_release and not dp_trained,
        approved_sha256=plan.approved_sha256,
        describe=_describe_options(policy, config, checked, plan) if kind == "describe" else None,
        release=plan.release,
        rare_level_rows=0 if policy.noisy else policy.min_count,
        label_range=config.label_ranges.get(checked.label),
        structure=policy.noisy and not dp_trained,
        public_classes=policy.noisy and kind in ("train", "evaluate"),
        base_model=SavedModel(file=BASE_MODEL_FILE) if plan.base_model is not None else None,
        dp_training=PrivateTraining(
            rho=policy.dp_rho_train,
            column_ranges=config.column_ranges,
            column_levels=config.column_levels,
            delta=policy.dp_delta,
        )
        if dp_trained
        else None,
        federated=federated,
    )


def _describe_options(
    policy: Policy, config: DatasetConfig, spec: DatasetSpec, plan: JobPlan
) -> DescribeOptions:
    """A describe's options: in the noisy modes, the owner's public ranges and levels (a label's range
    from `label_ranges`) and what its sketch may spend."""
    if not policy.noisy:
        return DescribeOptions(max_categories=policy.max_categories)
    spec_json = spec.model_dump(mode="json", exclude_none=True)
    return DescribeOptions(
        max_categories=policy.max_categories,
        private=True,
        ranges={**config.column_ranges, **config.label_ranges},
        levels=config.column_levels,
        sketch_rho=policy.dp_rho_describe_sketch if config.undeclared(spec_json, plan.features) else 0.0,
        delta=policy.dp_delta,
    )


def staging_plan(
    spec: DatasetSpec,
    kind: str,
    path: str,
    id_column: str,
    plan: JobPlan,
    label_levels: list[str] | None = None,
) -> Staging:
    """The query that admits a spec's rows from a Parquet file, with its file row numbers, built here by
    trusted code from the spec the API checked (the worker and a cluster only run it); with public classes
    of the label (the owner's declared ones, else the spec's), only rows of those classes. Kept for the
    next job that asks the same (a notebook sends the same spec cell after cell; sqlglot takes
    milliseconds to build it)."""
    built = _staging_plan(
        spec.model_dump_json(exclude_none=True),
        kind,
        path,
        id_column,
        plan.model_dump_json(include={"features", "filter_columns", "derive_columns", "label_dtype"}),
        None if label_levels is None else tuple(label_levels),
    )
    return built.model_copy(update={"table_rows": _footer(path)[1]}, deep=True)


@functools.lru_cache(maxsize=256)
def _staging_plan(
    spec_json: str, kind: str, path: str, id_column: str, plan_json: str, label_levels: tuple[str, ...] | None
) -> Staging:
    spec = DatasetSpec.model_validate_json(spec_json)
    resolved = JobPlan.model_validate_json(plan_json).resolved(list(spec.derive or {}), id_column)
    levels = None if label_levels is None else list(label_levels)
    source = exp.func(
        "read_parquet", exp.Placeholder(), exp.EQ(this=exp.var("file_row_number"), expression=exp.true())
    )
    row_number = exp.column("file_row_number", quoted=True)
    query, params = staging_query(spec, resolved, source, row_number, kind, levels, flag_missing=True)
    partition = exp.table_(PARTITION_TABLE, quoted=True)
    partition_query, _ = staging_query(spec, resolved, partition, row_number, kind, levels)
    return Staging(
        dataset_path=path,
        query=query,
        params=params,
        columns=resolved.all_features,
        label=spec.label,
        partition_query=partition_query,
        partition_missing_label_query=missing_label_query(spec, resolved, partition),
        label_levels=levels,
        label_dtype=resolved.label_dtype,
    )
