"""Build the task a worker receives from a job (or a describe or review request) and the config.

One builder for every kind, so limits, bounds and the staging plan are set the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path

from remote_magic.codes import Refusal
from remote_magic.wire import DatasetSpec, ReleaseOptions

from ..data.versions import Versions, snapshot_file
from ..protocol import DescribeOptions, Limits, SavedModel, Staging, Task, TaskKind
from ..settings import Settings

CPU_SLACK_S = 30
BASE_MODEL_FILE = "base.json"
REVIEW_CPU_S = 30
REVIEW_MEMORY_MB = 2048


def _snapshot(settings: Settings, dataset: str, plan: dict) -> Path:
    """The immutable snapshot of the dataset version the plan names: the only file a worker reads."""
    if "snapshot" not in plan:  # queued by a server that had no dataset versions: the latest one
        latest = Versions(settings.snapshots_dir).latest(dataset)
        plan["snapshot"] = latest.content_hash if latest else ""
    path = snapshot_file(settings.snapshots_dir, dataset, plan["snapshot"])
    if not plan["snapshot"] or not path.exists():
        raise Refusal(
            "unknown_version",
            f"version {plan.get('dataset_version')} of dataset {dataset!r} was pruned before the job ran",
        )
    return path


def build_task(
    settings: Settings,
    kind: TaskKind,
    dataset: str | None = None,
    spec: dict | None = None,
    plan: dict | None = None,
) -> Task:
    """The task for a job of `kind` on `dataset` with its spec and the plan the API resolved."""
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
    limits = Limits(
        threads=threads,
        cpu_seconds=policy.job_timeout_s * threads + CPU_SLACK_S,
        memory_mb=policy.worker_memory_mb,
        max_payload_bytes=0 if kind == "describe" else server.max_payload_mb * 2**20,
        sandbox_uid=server.sandbox_uid,
        sandbox_gid=server.sandbox_gid,
    )
    staging = Staging(
        dataset_path=str(_snapshot(settings, dataset, plan)),
        id_column=config.id_column,
        features=plan["features"],
        filter_columns=plan["filter_columns"],
        derive_columns=plan.get("derive_columns", []),
    )
    parsed = DatasetSpec.model_validate(spec)
    return Task(
        kind=kind,
        spec=parsed,
        staging=staging,
        bounds=settings.bounds_for(dataset),
        limits=limits,
        model_facts=kind == "train" and config.allow_model_release,
        approved_sha256=plan.get("approved_sha256"),
        describe=DescribeOptions(max_categories=policy.max_categories) if kind == "describe" else None,
        release=ReleaseOptions.model_validate(plan.get("release") or {}),
        rare_level_rows=policy.min_count,
        label_range=config.label_ranges.get(parsed.label),
        base_model=SavedModel(file=BASE_MODEL_FILE, family="xgboost") if plan.get("base_model") else None,
    )
