"""A job's status as its user sees it: the stored job, plus what became of its model and registration."""

from __future__ import annotations

from remote_magic.contract.wire import (
    ErrorDetail,
    JobStatus,
    MetricPoint,
    ModelReleaseStatus,
    Progress,
    Registration,
)
from remote_magic.families import MODEL_FILE

from ..jobs.store import JobRow, Store
from ..registry.access import Registry, main_metric
from ..release.desk import ReleaseDesk


def whole_seconds(stamp: str | None) -> str | None:
    """A timestamp as the analyst sees it: whole seconds, so a job's duration tells nothing finer."""
    return None if stamp is None else stamp[:19] + "Z"


def _main_metric(job: JobRow) -> MetricPoint | None:
    return main_metric(job.result.get("metrics", {}), job.result.get("intervals")) if job.result else None


def _rounds(job: JobRow) -> int | None:
    """The model's boosting rounds: from the result when done, from the worker's progress while it runs."""
    if job.result:
        return job.result["rounds"]["total"]
    return job.progress.get("total_rounds") or None


def _model_kept(job: JobRow, registry: Registry, outcome: tuple | None) -> str | None:
    if job.kind != "train" or job.state != "succeeded":
        return None
    if outcome is not None and outcome[0] == "registered" and registry.store.is_registered(job.id):
        return "registered"
    return "kept" if (registry.jobs_dir / job.id / MODEL_FILE).exists() else "pruned"


def status_of(job: JobRow, registry: Registry) -> JobStatus:
    """A job's status as its user sees it, with what became of its model."""
    error = ErrorDetail(code=job.error_code, message=job.error_message or "") if job.error_code else None
    outcome = registry.store.outcome(job.id)
    registration = Registration(state=outcome[0], version=outcome[1], message=outcome[2]) if outcome else None
    return JobStatus(
        id=job.id,
        dataset=job.dataset,
        dataset_version=job.plan.dataset_version,
        kind=job.kind,  # type: ignore[arg-type]
        state=job.state,  # type: ignore[arg-type]
        progress=Progress.model_validate(job.progress),
        submitted_at=whole_seconds(job.submitted_at),  # type: ignore[arg-type]
        started_at=whole_seconds(job.started_at),
        finished_at=whole_seconds(job.finished_at),
        error=error,
        main_metric=_main_metric(job),
        model=job.plan.model,
        rounds=_rounds(job),
        isolation=job.isolation,
        version=job.version,
        base_model=job.plan.base_model.ref if job.plan.base_model else None,
        recipe=job.plan.recipe,
        trigger=job.plan.trigger,
        registration=registration,
        model_file=_model_kept(job, registry, outcome),
    )


def job_release(desk: ReleaseDesk, job: JobRow, store: Store) -> ModelReleaseStatus:
    """What the release desk says of a job's model (the job, the registry and the MLflow export ask, and
    the intake of a job that continues it). A base version whose release the intake did not record (a
    job accepted before it did) is asked about now, down its chain; one no longer stored is not one."""
    if job.kind != "train" or job.state != "succeeded":
        said = (
            f"{job.state} and left no model"
            if job.kind == "train"
            else "evaluated a model and trained none"
            if job.kind == "evaluate"
            else "trained no model"
        )
        return ModelReleaseStatus(
            job_id=job.id, state="not_allowed", message=f"this job {said}: there is no model to take"
        )
    base = job.plan.base_model
    custom_code = job.plan.approved_sha256 is not None
    dp_base = None
    if base is not None:
        dp_base = base.dp_release
        if dp_base is None:
            trained = store.get_job(base.job)
            dp_base = trained is not None and job_release(desk, trained, store).state == "dp_model"
    return desk.model_release(
        job.id, job.dataset, job.result, custom_code, (base.ref, dp_base) if base is not None else None
    )
