"""A train, evaluate or plan task inside the confined worker: decode, canonicalise, bound, stage.

Decoding the payload happens here only (the strict unpickler, in the sandbox). A plan task stops there
and hands back the canonical plan, for a cluster that may not see the payload; a train or evaluate task
stages the admitted rows as one partition and runs the model job (runner/model_job.py), the same steps
a cluster job's driver runs on its partitions. Whether anything is released is decided by the parent's
release desk, first on the admitted rows (before any step whose outcome depends on their values), then
on the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import duckdb

from remote_magic.contract.codes import Refusal
from remote_magic.contract.types import continuous_label_hint, text_label_hint
from remote_magic.families import family as family_named
from remote_magic.families import family_for, family_of_saved
from remote_magic.families.base import (
    ModelFamily,
    Plan,
    check_classes_fit,
    check_kind,
    check_public_classes,
    check_public_levels,
    is_classifier_task,
)
from remote_magic.families.partitions import InProcess

from ..protocol import CanonicalPlan, PlanReady, Task, TrainReport
from ..runner import model_job
from ..runner.channel import Channel
from . import staging
from .unpickle import approved_loads, strict_loads

HERE = Path(".")  # the job folder: a confined worker runs in it and reaches it by relative paths


def decode(task: Task, payload: BinaryIO | None) -> tuple[ModelFamily, Plan]:
    """Decode the payload (strictly, or the owner-approved bytes), find its family, canonicalise it,
    continue the registered version the task names, and check it against the task's bounds."""
    assert task.bounds is not None
    data = payload.read() if payload is not None else b""
    if not data and task.base_model is None:
        raise Refusal("invalid_model", "the job has no model")
    model = None
    if data:
        model = (
            approved_loads(data, task.approved_sha256)
            if task.approved_sha256
            else strict_loads(data, task.limits.max_payload_bytes)
        )
    # A registered version, saved by a family's export: parsed here, in the sandbox, never unpickled.
    saved = (HERE / task.base_model.file).read_bytes() if task.base_model is not None else None
    family = family_for(model) if model is not None else _saved_family(saved or b"")
    if task.dp_training is not None:  # mode dp trains with the DP trainer, whatever estimator was sent
        family = family_named("dpboost")
    plan = family.canonical(model, custom_code=bool(task.approved_sha256)) if model is not None else None
    if saved is not None:
        plan = family.continued(plan, saved)
    assert plan is not None
    family.check_bounds(plan, task.bounds)
    if task.staging is not None:
        family.check_columns(plan, task.staging.columns)
    if task.spec is not None:
        check_classes_fit(plan.task, task.spec.classes)
    if task.dp_training is not None:
        assert task.staging is not None
        staged = task.staging
        classifier = is_classifier_task(plan.task)
        hint = (continuous_label_hint if classifier else text_label_hint)(staged.label, staged.label_dtype)
        family.check_order(  # type: ignore[attr-defined]
            plan, task.label_range, staged.label_levels, hint, label=staged.label
        )
    if task.public_classes:
        assert task.staging is not None
        check_public_classes(family, plan, task.staging.label, task.staging.label_levels)
        check_public_levels(family, plan)
    if str(plan.params.get("device") or "cpu") != "cpu" and not task.limits.gpu:
        raise Refusal("parameter_out_of_bounds", "device = 'cuda' needs a GPU, and this server has none")
    check_kind(task.kind, plan.base is not None, plan.preprocess is not None, plan.stops_early)
    return family, plan


def _saved_family(saved: bytes) -> ModelFamily:
    name = family_of_saved(saved)
    if name is None:
        raise Refusal("base_model_unavailable", "the registered model could not be read")
    return family_named(name)


def plan_only(task: Task, payload: BinaryIO | None, channel: Channel) -> PlanReady:
    """A `plan` task: the canonical plan of the payload, for a cluster that may not see the payload. The
    base booster goes to the job folder as XGBoost JSON, re-written by XGBoost from the parsed model."""
    channel.stage("starting")
    family, plan = decode(task, payload)
    base = None
    if plan.base is not None:
        base = "portable_base.json"  # beside, never over, a registered version's base.json
        (HERE / base).write_bytes(family.portable_base(plan))
    return PlanReady(plan=CanonicalPlan.of(plan, base))


def run(
    task: Task, payload: BinaryIO | None, channel: Channel, con: duckdb.DuckDBPyConnection | None = None
) -> TrainReport | None:
    """Run the task on the staged rows, one partition in this process; None when the parent stopped it
    at admission. `con`: the task's DuckDB, if a warm worker connected it already."""
    assert task.spec is not None and task.staging is not None and task.bounds is not None
    channel.stage("starting")
    family, plan = decode(task, payload)
    channel.stage("staging")
    return model_job.run(task, plan, family, InProcess([staging.stage(task, con=con)]), channel, HERE)
