"""A train or evaluate task inside the worker: decode, canonicalise, stage, admit, train, score, report.

The model family does the model-specific work; this module only orders the steps and reports raw
numbers: exact metrics (mode rules rounds them), the clipped sums a DP release is drawn from, the
opt-in learning-curve and permutation-importance sums, and the structural facts (how many rows the
model's leaves and predictions set apart). Whether anything is released is decided by the parent's
release desk, first on the admitted rows (before any step whose outcome depends on their values),
then on the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import ModelBounds
from remote_magic.families import family as family_named
from remote_magic.families import family_for, scoring
from remote_magic.families.base import (
    Labels,
    ModelFamily,
    Plan,
    Split,
    check_kind,
    encode_labels,
    is_classifier_task,
)

from ..protocol import (
    Admission,
    CanonicalPlan,
    Confusion,
    CurveReport,
    CurveStats,
    EvalStats,
    LeafFacts,
    PlanReady,
    RoundsReport,
    Structure,
    Task,
    TrainReport,
)
from ..runner import evidence
from ..runner.channel import Channel
from . import staging
from .unpickle import approved_loads, strict_loads

HERE = Path(".")  # the job folder: a confined worker runs in it and reaches it by relative paths
PERMUTATION_SEED = 20261130


def _both(a: Split, b: Split) -> Split:
    return Split(x=a.x + b.x, y=np.concatenate([a.y, b.y]))


def checkpoints(base: int, total: int, k: int) -> list[int]:
    """K rounds spread evenly over the rounds trained here (the last one included)."""
    new = total - base
    if new <= 0 or k <= 0:
        return []
    return sorted({base + max(1, round(new * (i + 1) / k)) for i in range(min(k, new))})


def _curve(
    family: ModelFamily,
    trained: Any,
    task: str,
    labels: Labels,
    base: int,
    total: int,
    k: int,
    residual_clip: float | None,
) -> CurveStats | None:
    clip = scoring.loss_clip(task, residual_clip)
    rounds = checkpoints(base, total, k)
    if clip is None or not rounds:
        return None
    n_classes = len(labels.classes)
    sums = [
        float(
            scoring.row_losses(
                task, labels.eval, family.predict(trained, rounds=r), n_classes, residual_clip
            ).sum()
        )
        for r in rounds
    ]
    return CurveStats(
        rounds=rounds, loss_sums=sums, loss_clip=clip, metric="rmse" if task == "regression" else "log_loss"
    )


def _permutation(
    family: ModelFamily,
    trained: Any,
    task: str,
    evaluation: Split,
    labels: Labels,
    residual_clip: float | None,
) -> dict[str, float] | None:
    """Each feature's clipped-loss increase on the evaluation rows when its column is shuffled."""
    if scoring.loss_clip(task, residual_clip) is None or not len(evaluation.y):
        return None
    n_classes = len(labels.classes)
    base = scoring.row_losses(task, labels.eval, family.predict(trained), n_classes, residual_clip).sum()
    order = np.random.default_rng(PERMUTATION_SEED).permutation(len(evaluation.y))
    scores = {}
    table = evaluation.x.table()  # a shuffle needs each column whole: opt-in, evaluation rows only
    for name in table.column_names:
        index = table.schema.get_field_index(name)
        shuffled = table.set_column(index, name, table.column(name).take(pa.array(order)))
        pred = family.predict(trained, Split(x=shuffled, y=evaluation.y))
        scores[name] = float(
            scoring.row_losses(task, labels.eval, pred, n_classes, residual_clip).sum() - base
        )
    return scores


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
    family = family_for(model) if model is not None else family_named(task.base_model.family)  # type: ignore[union-attr]
    plan = family.canonical(model, custom_code=bool(task.approved_sha256)) if model is not None else None
    if task.base_model is not None:
        # A registered version, saved by a family's export: parsed here, in the sandbox, never unpickled.
        plan = family.continued(plan, (HERE / task.base_model.file).read_bytes())
    assert plan is not None
    family.check_bounds(plan, task.bounds)
    if str(plan.params.get("device") or "cpu") != "cpu" and not task.limits.gpu:
        raise Refusal("parameter_out_of_bounds", "device = 'cuda' needs a GPU, and this server has none")
    return family, plan


def job_bounds(task: Task) -> ModelBounds:
    """The bounds a job's model must keep: the leaf rule is about trees trained here, and an evaluation
    trains none."""
    assert task.bounds is not None
    return task.bounds if task.kind == "train" else task.bounds.model_copy(update={"min_leaf_rows": None})


def plan_only(task: Task, payload: BinaryIO | None, channel: Channel) -> PlanReady:
    """A `plan` task: the canonical plan of the payload, for a cluster that may not see the payload. The
    base booster goes to the job folder as XGBoost JSON, re-written by XGBoost from the parsed model."""
    channel.stage("starting")
    family, plan = decode(task, payload)
    base = None
    if plan.base is not None:
        base = "portable_base.json"  # beside, never over, a registered version's base.json
        (HERE / base).write_bytes(family.portable_base(plan))
    return PlanReady(
        plan=CanonicalPlan(
            family=plan.family,
            params=plan.params,
            rounds=plan.rounds,
            task=plan.task,
            base=base,
            base_rounds=plan.base_rounds,
            preprocess=plan.preprocess,
        )
    )


def run(task: Task, payload: BinaryIO | None, channel: Channel) -> TrainReport | None:
    """Run the task; None when the parent stopped it at admission."""
    assert task.spec is not None and task.staging is not None and task.bounds is not None
    channel.stage("starting")
    family, plan = decode(task.model_copy(update={"bounds": job_bounds(task)}), payload)
    check_kind(task.kind, plan.base is not None, plan.preprocess is not None)

    channel.stage("staging")
    staged = staging.stage(task)
    classes = is_classifier_task(plan.task)
    counts = {"eval": staging.counts(staged.eval, classes)}
    sets = {"evaluation": staged.eval_rows}
    if task.kind == "train":
        counts["train"] = staging.counts(staged.train, classes)
        sets["training"] = staged.train_rows
        sets["admitted"] = np.concatenate([staged.train_rows, staged.eval_rows])
    admission = Admission(
        counts=counts,  # type: ignore[arg-type]
        row_sets=evidence.write_row_sets(HERE, sets),  # type: ignore[arg-type]
        table_rows=evidence.table_rows(task.staging.dataset_path),
    )
    if not channel.admit(admission):
        return None

    labels = encode_labels(staged.train.y, staged.eval.y, task.spec.label, plan.task)
    threads = task.limits.threads
    facts = None
    structure = Structure()
    if task.kind == "train":
        channel.stage("training", 0, plan.rounds)

        def report(done: int, latest: dict) -> None:
            channel.stage("training", done, plan.rounds, latest)

        trained = family.train(plan, staged.train, staged.eval, labels, threads, report)
        family.export(trained, HERE)
        if task.model_facts:
            facts = LeafFacts(**family.leaf_facts(trained))
        admitted = _both(staged.train, staged.eval)
        if task.structure:
            structure.trained_smallest_leaf = family.smallest_leaf(trained, rounds=(plan.base_rounds, None))
        if task.structure and plan.base_rounds:
            structure.base_smallest_leaf = family.smallest_leaf(
                trained, admitted, rounds=(0, plan.base_rounds)
            )
    else:
        trained = family.score(plan, staged.eval, labels, threads)
        admitted = staged.eval
        if task.structure:
            structure.base_smallest_leaf = family.smallest_leaf(trained, admitted)

    channel.stage("evaluating")
    out_task = family.task(trained)
    n_classes = len(labels.classes)
    rounds = family.rounds(trained)
    if task.structure:  # only mode dp reads it: predictions on every admitted row cost time
        pred = family.predict(trained, admitted)
        structure.trained_isolated = scoring.isolated_rows(out_task, pred, len(admitted.y), n_classes)
    if task.structure and plan.base_rounds:
        base_pred = family.predict(trained, admitted, rounds=plan.base_rounds)
        structure.base_isolated = scoring.isolated_rows(out_task, base_pred, len(admitted.y), n_classes)
    evaluation = family.evaluate(trained)
    label_range = task.label_range if out_task == "regression" else None
    residual_clip = label_range[1] - label_range[0] if label_range else None
    stats = scoring.stats(out_task, labels.eval, family.predict(trained), n_classes, label_range)
    curve = None
    if task.release.curve:
        curve = _curve(
            family,
            trained,
            out_task,
            labels,
            rounds["base"],
            rounds["total"],
            task.release.curve,
            residual_clip,
        )
    importance = None
    if task.release.importance:
        importance = _permutation(family, trained, out_task, staged.eval, labels, residual_clip)
    history = family.history(trained)
    confusion = evaluation.get("confusion")
    return TrainReport(
        task=out_task,  # type: ignore[arg-type]
        metrics=evaluation["metrics"],
        confusion=Confusion(labels=labels.classes, counts=confusion) if confusion is not None else None,
        history=CurveReport(**history) if history else None,
        feature_importance=family.importance(trained),
        rounds=RoundsReport(**rounds),
        model=facts,
        stats=EvalStats(**stats),
        curve=curve,
        importance_scores=importance,
        importance_clip=3 * scoring.loss_clip(out_task, residual_clip) if importance is not None else None,
        structure=structure,
    )
