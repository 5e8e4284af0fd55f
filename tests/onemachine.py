"""A model family on rows held in this process, as one partition: what the family tests call."""

from __future__ import annotations

from remote_magic.families.aggregates import Asked, measure
from remote_magic.families.base import Labels, ModelFamily, Plan, Run, Split
from remote_magic.families.partitions import InProcess, one_machine
from remote_magic.families.xgboost.family import STATE


def train_here(family: ModelFamily, plan: Plan, train: Split, evaluation: Split, labels: Labels, report=None):
    """Train as a local worker does, on one partition; the trained model and the partitions."""
    parts = one_machine(train, evaluation, labels)
    return family.train(plan, parts, labels.classes, Run(1, report or (lambda *_: None))), parts


def leaf_facts(family: ModelFamily, trained: object, parts: InProcess) -> dict:
    """What the model-release rules read, with the leaves counted as a job's report counts them."""
    rounds = family.rounds(trained)
    n_classes = len(parts.parts[0].labels.classes)
    asked = Asked(family.task(trained), n_classes, rounds["base"], rounds["total"], True, True, leaves=True)
    smallest = measure(family, trained, parts, asked).trained_leaf
    return {"min_leaf_rows": smallest, **family.release_facts(trained)}


def held_matrix(parts: InProcess, split: str) -> object:
    """The matrix of a split an XGBoost training on one partition left in the partition's state."""
    return parts.parts[0].state[STATE][split][0]
