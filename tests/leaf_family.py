"""A second model family, written against the partition seam only: boosting with one-leaf trees.

Each round, every partition sends the gradient and hessian sums of its training rows at its current
margins (which it keeps in its state, where its rows are); the coordinator computes the round's leaf
value and sends it back, and every partition moves its margins. It is the shape of a DP trainer's rounds
(per-leaf sums from the partitions, leaf values from the coordinator), without the noise, and it knows
nothing of where its partitions are: the same code trains in the local worker and on a cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from remote_magic.families import MODEL_FILE
from remote_magic.families.base import Part, Partitions, Plan, Run

LAMBDA = 1.0
ETA = 0.5
MARGINS = "leaf_margins"


@dataclass
class Leaves:
    task: str  # binary or regression
    values: list[float] = field(default_factory=list)

    def margin(self, rounds: int | None) -> float:
        return float(sum(self.values[: rounds or len(self.values)]))


def _start(part: Part) -> dict:
    part.state[MARGINS] = {split: np.zeros(len(part.split(split).y)) for split in ("train", "eval")}
    return {}


def _gradients(part: Part, task: str) -> dict:
    y, margin = part.y("train"), part.state[MARGINS]["train"]
    if task == "binary":
        p = 1 / (1 + np.exp(-margin))
        return {"g": float((p - y).sum()), "h": float((p * (1 - p)).sum())}
    return {"g": float((margin - y).sum()), "h": float(len(y))}


def _step(part: Part, value: float) -> dict:
    for margins in part.state[MARGINS].values():
        margins += value
    return {}


class LeafFamily:
    name = "leaves"

    def recognises(self, model: object) -> bool:
        return isinstance(model, Leaves)

    def train(self, plan: Plan, parts: Partitions, classes: list[str], run: Run) -> Leaves:
        model = Leaves("binary" if classes else "regression")
        parts.map(_start)
        for done in range(plan.rounds):
            run.check()
            sums = parts.map(_gradients, model.task)
            value = -ETA * sum(s["g"] for s in sums) / (sum(s["h"] for s in sums) + LAMBDA)
            model.values.append(value)
            parts.map(_step, value)
            run.report(done + 1, {})
        return model

    def score(self, plan: Plan, parts: Partitions, classes: list[str], run: Run) -> Leaves:
        return Leaves("binary" if classes else "regression", list(plan.params["values"]))

    def predict(self, trained: Leaves, part: Part, split: str, rounds: int | None = None) -> np.ndarray:
        margin = np.full(len(part.split(split).y), trained.margin(rounds))
        return 1 / (1 + np.exp(-margin)) if trained.task == "binary" else margin

    def leaf_counts(self, trained: Leaves, part: Part, split: str, rounds: tuple[int, int]) -> list:
        return [np.array([len(part.split(split).y)]) for _ in range(*rounds)]

    def history(self, trained: Leaves) -> dict | None:
        return None

    def importance(self, trained: Leaves) -> dict[str, float]:
        return {}

    def rounds(self, trained: Leaves) -> dict[str, int]:
        return {"base": 0, "new": len(trained.values), "total": len(trained.values)}

    def task(self, trained: Leaves) -> str:
        return trained.task

    def training(self, trained: Leaves) -> None:
        return None

    def release_facts(self, trained: Leaves) -> dict:
        return {"leaves": len(trained.values)}

    def export(self, trained: Leaves, folder: Path) -> None:
        (folder / MODEL_FILE).write_text(json.dumps(trained.values))


FAMILY = LeafFamily()
