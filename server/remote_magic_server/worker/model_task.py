"""A train or evaluate task inside the worker: decode, canonicalise, stage, admit, train, score, report.

The model family does the model-specific work; this module only orders the steps and reports raw
numbers. Whether anything is released is decided by the parent's release desk, first on the admitted
rows (before any step whose outcome depends on their values), then on the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from remote_magic.codes import Refusal
from remote_magic.families import family as family_named
from remote_magic.families import family_for
from remote_magic.families.base import encode_labels, is_classifier_task

from ..protocol import Admission, Confusion, CurveReport, LeafFacts, RoundsReport, Task, TrainReport
from . import evidence, staging
from .channel import Channel
from .unpickle import approved_loads, strict_loads

HERE = Path(".")  # the job folder: a confined worker runs in it and reaches it by relative paths


def run(task: Task, payload: BinaryIO | None, channel: Channel) -> TrainReport | None:
    """Run the task; None when the parent stopped it at admission."""
    assert task.spec is not None and task.staging is not None and task.bounds is not None
    channel.stage("starting")
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
    if task.kind == "evaluate" and plan.base is None:
        raise Refusal("unsupported_model", "evaluation needs a fitted model; fit it first")
    if task.kind == "evaluate" and plan.preprocess is not None:
        raise Refusal("unsupported_model", "evaluate takes a bare XGBoost model; send a Pipeline with train")

    channel.stage("staging")
    staged = staging.stage(task.staging, task.spec, task.kind)
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
    if task.kind == "train":
        channel.stage("training", 0, plan.rounds)

        def report(done: int, latest: dict) -> None:
            channel.stage("training", done, plan.rounds, latest)

        trained = family.train(plan, staged.train, staged.eval, labels, threads, report)
        family.export(trained, HERE)
        if task.model_facts:
            facts = LeafFacts(**family.leaf_facts(trained))
    else:
        trained = family.score(plan, staged.eval, labels, threads)

    channel.stage("evaluating")
    evaluation = family.evaluate(trained)
    history = family.history(trained)
    confusion = evaluation.get("confusion")
    return TrainReport(
        task=family.task(trained),  # type: ignore[arg-type]
        metrics=evaluation["metrics"],
        confusion=Confusion(labels=labels.classes, counts=confusion) if confusion is not None else None,
        history=CurveReport(**history) if history else None,
        feature_importance=family.importance(trained),
        rounds=RoundsReport(**family.rounds(trained)),
        model=facts,
    )
