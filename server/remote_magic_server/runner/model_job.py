"""One train or evaluate job, whichever machines hold its rows: admit, train or score, report.

The confined worker (worker/model_task.py) runs it on its staged rows, one in-process partition; a
cluster job's driver (cluster/driver.py) on partitions staged on the cluster's machines. The steps and
their order are the same for both, and so is everything they send the parent: the admission (counts per
split and class, the row sets), progress, then a report of raw aggregates, which the parent's release
desk alone turns into what leaves. What runs where a partition's rows are returns aggregates only: the
admission share below, the family's training steps, the report's counts (families/aggregates.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pyroaring import BitMap

from remote_magic.contract import rows
from remote_magic.families import aggregates
from remote_magic.families.base import (
    Labels,
    ModelFamily,
    Part,
    Partitions,
    Plan,
    PrivateOrder,
    Run,
    class_names,
    declared_values,
    is_classifier_task,
    label_facts,
    label_values,
    present_labels,
)
from remote_magic.families.base import encode as encode_labels

from ..protocol import (
    Admission,
    Confusion,
    CurveReport,
    CurveStats,
    EvalStats,
    ModelFacts,
    RoundsReport,
    SplitCounts,
    Structure,
    Task,
    TrainingFacts,
    TrainReport,
)
from . import evidence
from .channel import Channel

SPLITS = ("train", "eval")


def run(
    task: Task,
    plan: Plan,
    family: ModelFamily,
    parts: Partitions,
    channel: Channel,
    folder: Path,
    check: Callable[[], None] = lambda: None,
) -> TrainReport | None:
    """Run the job on its partitions; None when the parent stopped it at admission. `check` raises
    when the job must stop (on a cluster: a cancel, a lost machine)."""
    admitted = admit(task, parts, channel, folder, is_classifier_task(plan.task))
    if admitted is None:
        return None
    classes, train_rows = admitted

    def report(done: int, latest: dict) -> None:
        channel.stage("training", min(done, plan.rounds), plan.rounds, latest)

    training = Run(
        task.limits.threads, report, check, public_levels=task.public_classes, public_rows=train_rows
    )
    if task.dp_training is not None and task.kind == "train":
        order = task.dp_training
        training.private = PrivateOrder(
            rho=order.rho,
            column_ranges=dict(order.column_ranges),
            column_levels={name: tuple(levels) for name, levels in order.column_levels.items()},
            label_range=task.label_range,
            delta=order.delta,
        )
        training.noise, training.select, training.declare = channel.noise, channel.select, channel.declare
        training.noise_many, training.select_many = channel.noise_many, channel.select_many
    if task.kind == "train":
        channel.stage("training", 0, plan.rounds)
        trained = family.train(plan, parts, classes, training)
        family.export(trained, folder)
    else:
        trained = family.score(plan, parts, classes, training)
    channel.stage("evaluating")
    return train_report(task, family, trained, parts, classes)


def admit(
    task: Task, parts: Partitions, channel: Channel, folder: Path, classifier: bool
) -> tuple[list[str], int | None] | None:
    """Send the partitions' admission; once the parent lets it proceed, fix the labels and text levels
    on every partition and return the class names (None: stopped at admission). A federated step runs
    this too, so its rows are admitted and labelled as a train job's. With the class names comes the
    training rows' noisy count the parent drew at admission (noisy modes; None otherwise)."""
    assert task.spec is not None and task.staging is not None
    shares = parts.map(admission_share, classifier)
    decision = channel.admit(_admission(shares, task, folder))
    if not decision.proceed:
        return None
    facts = [share["splits"][split]["labels"] for share in shares for split in SPLITS]
    values = label_values(facts, task.spec.label, classifier, task.staging.label_levels)
    levels = _merged_levels(shares)
    rare = rows.rare_levels(levels, task.rare_level_rows)
    parts.map(prepare, values, rare, rows.levels(levels, rare))
    return class_names(values), decision.train_rows


def admission_share(part: Part, classifier: bool) -> dict:
    """A partition's share of the admission: rows (and, for a classifier, rows per class) of each split
    with their row numbers as roaring bitmaps, the rows per text level, and what the label rules read."""
    out: dict = {
        "levels": {name: dict(found) for name, found in part.levels.items()},
        "splits": {},
        "missing_label": part.missing_label,
    }
    for name, split, numbers in zip(SPLITS, (part.train, part.eval), (part.train_rows, part.eval_rows)):
        share: dict = {
            "rows": len(split.y),
            "row_ids": BitMap(numbers.astype(np.uint32, copy=False)).serialize(),
            "labels": label_facts(split.y, classifier),
        }
        if classifier:
            values, counts = np.unique(present_labels(split.y), return_counts=True)
            share["classes"] = {str(v): int(n) for v, n in zip(values, counts)}
        out["splits"][name] = share
    return out


def _admission(shares: list[dict], task: Task, folder: Path) -> Admission:
    """The partitions' shares as one admission, its row sets written to the job folder."""
    assert task.staging is not None
    counts: dict[str, SplitCounts] = {}
    sets: dict[str, BitMap] = {}
    for split in SPLITS:
        classes: Counter | None = None
        if "classes" in shares[0]["splits"][split]:
            classes = Counter()
            for share in shares:
                classes.update(share["splits"][split]["classes"])
            if task.staging.label_levels is not None:  # every declared class is counted, with or without rows
                dtype = np.dtype(shares[0]["splits"][split]["labels"]["dtype"])
                names = class_names(declared_values(task.staging.label_levels, dtype))
                classes = Counter({name: classes[name] for name in names})
        rows_ = sum(share["splits"][split]["rows"] for share in shares)
        counts[split] = SplitCounts(rows=rows_, classes=dict(classes) if classes is not None else None)
        sets[split] = BitMap.union(*[BitMap.deserialize(s["splits"][split]["row_ids"]) for s in shares])
    row_sets = {"evaluation": sets["eval"]}
    if task.kind in ("train", "sums"):
        row_sets.update(training=sets["train"], admitted=sets["train"] | sets["eval"])
    else:
        counts.pop("train")
    missing = [share["missing_label"] for share in shares if share.get("missing_label") is not None]
    return Admission(
        counts=counts,  # type: ignore[arg-type]
        row_sets=evidence.write_bitmaps(folder, row_sets),  # type: ignore[arg-type]
        table_rows=evidence.table_rows(task.staging),
        missing_label=sum(missing) if missing else None,
    )


def _merged_levels(shares: list[dict]) -> dict[str, Counter]:
    levels: dict[str, Counter] = {}
    for share in shares:
        for name, found in share["levels"].items():
            levels.setdefault(name, Counter()).update(found)
    return levels


def prepare(part: Part, values: np.ndarray | None, rare: dict, text: dict) -> dict:
    """Fix a partition's labels as numbers (class codes into `values`, or floats) and its text columns'
    levels (rare ones merged, as across every partition)."""
    part.labels = Labels(
        encode_labels(part.train.y, values), encode_labels(part.eval.y, values), class_names(values)
    )
    for split in (part.train, part.eval):
        split.x.merge_levels(rare, text)
    return {}


def train_report(
    task: Task, family: ModelFamily, trained: Any, parts: Partitions, classes: list[str]
) -> TrainReport:
    """The report of raw aggregates: the model's own facts, and what the partitions counted with it."""
    out_task = family.task(trained)
    rounds = family.rounds(trained)
    train = task.kind == "train"
    asked = aggregates.Asked(
        task=out_task,
        n_classes=len(classes),
        base_rounds=rounds["base"],
        total_rounds=rounds["total"],
        train=train,
        exact=len(parts) == 1,
        label_range=task.label_range if out_task == "regression" else None,
        curve=task.release.curve,
        structure=task.structure,
        leaves=task.structure or task.model_facts,
        importance=bool(task.release.importance),
    )
    measured = aggregates.measure(family, trained, parts, asked)
    structure = Structure()
    if task.structure:
        structure.trained_isolated = measured.isolated["trained"]
        structure.base_isolated = measured.isolated.get("base")
        if train:
            structure.trained_smallest_leaf = measured.trained_leaf
        if not train or asked.base_rounds:
            structure.base_smallest_leaf = measured.base_leaf
    facts = None
    if task.model_facts and train:
        facts = ModelFacts(
            family=family.name, min_leaf_rows=measured.trained_leaf, facts=family.release_facts(trained)
        )
    curve = None
    if measured.curve is not None:
        assert asked.loss_clip is not None
        metric = "rmse" if out_task == "regression" else "log_loss"
        curve = CurveStats(
            rounds=asked.checkpoints, loss_sums=measured.curve, loss_clip=asked.loss_clip, metric=metric
        )
    history = family.history(trained)
    spent = family.training(trained) if train else None
    confusion = measured.score.get("confusion")
    importance = measured.importance
    return TrainReport(
        task=out_task,  # type: ignore[arg-type]
        metrics=measured.score["metrics"],
        confusion=Confusion(labels=classes, counts=confusion) if confusion is not None else None,
        history=CurveReport(**history) if history else None,
        feature_importance=family.importance(trained),
        rounds=RoundsReport(**rounds),
        model=facts,
        stats=EvalStats(**measured.stats),
        curve=curve,
        importance_scores=importance,
        importance_clip=3 * asked.loss_clip
        if importance is not None and asked.loss_clip is not None
        else None,
        structure=structure,
        training=TrainingFacts(**spent) if spent is not None else None,
    )
