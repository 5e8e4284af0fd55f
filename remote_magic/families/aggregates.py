"""What each partition of a model job sends back once the model exists, and how it merges.

One code path for rows on one machine and on a cluster: the job's report builder (the server's
runner/model_job.py) maps `scores` over the partitions (for a regressor's isolation bins, `moments`
first) and merges what comes back with `combine`. A partition that holds every row of the job
(`Asked.exact`) computes the whole-table numbers directly: scikit-learn's exact metrics, the exact
isolation count, permutation importance; several partitions send the mergeable sums of `partials` (the
AUC from bins). Everything reads the model through the family's partition half (`predict`,
`leaf_counts`), on the machine that holds the partition.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..contract.codes import Refusal
from ..contract.rows import as_pandas
from . import partials, scoring
from .base import ModelFamily, Part, Partitions, Split

# The key of the rows' content hash that orders the permutation's cycle (`partners`): fixed and public.
PERMUTATION_KEY = "remote-magic-pi1"


def checkpoints(base: int, total: int, k: int) -> list[int]:
    """K rounds spread evenly over the rounds trained here (the last one included)."""
    new = total - base
    if new <= 0 or k <= 0:
        return []
    return sorted({base + max(1, round(new * (i + 1) / k)) for i in range(min(k, new))})


@dataclass
class Asked:
    """What the report needs counted over each partition, with the model."""

    task: str
    n_classes: int
    base_rounds: int
    total_rounds: int
    train: bool  # a training job: its training rows are admitted rows too
    exact: bool  # one partition holds every row
    label_range: tuple[float, float] | None = None
    curve: int = 0  # learning-curve checkpoints
    structure: bool = False  # what the model sets apart (mode dp): isolation, base leaves
    leaves: bool = False  # the new trees' leaf counts on the training rows
    importance: bool = False  # permutation importance (one partition only)
    spreads: dict[str, float | None] = field(default_factory=dict)

    @property
    def residual_clip(self) -> float | None:
        return self.label_range[1] - self.label_range[0] if self.label_range else None

    @property
    def loss_clip(self) -> float | None:
        return scoring.loss_clip(self.task, self.residual_clip)

    @property
    def checkpoints(self) -> list[int]:
        return checkpoints(self.base_rounds, self.total_rounds, self.curve)

    @property
    def admitted(self) -> tuple[str, ...]:
        return ("train", "eval") if self.train else ("eval",)

    def predictions(self) -> list[tuple[str, int | None]]:
        """The models whose predictions set rows apart: the trained one, and its base (its first rounds)."""
        return [("trained", None)] + ([("base", self.base_rounds)] if self.base_rounds else [])


@dataclass
class Measured:
    """The merged aggregates of every partition."""

    score: dict  # exact metrics (and, for classifiers, confusion counts)
    stats: dict  # the clipped sums of `scoring.stats`
    curve: list[float] | None
    trained_leaf: int | None  # the fewest training rows in a leaf of the new trees
    base_leaf: int | None  # the fewest admitted rows in a leaf of the base model's trees
    isolated: dict[str, int]  # rows set apart by the trained model's and the base model's predictions
    importance: dict[str, float] | None


def _predict(
    family: ModelFamily, model: Any, part: Part, split: str, asked: Asked, rounds: int | None = None
) -> np.ndarray:
    """The model's predictions on a partition's rows of `split` as every count here reads them
    (`scoring.bounded`: finite, a regression's within the label range), whatever the model predicts."""
    pred = family.predict(model, part, split, rounds)
    return scoring.bounded(asked.task, pred, asked.n_classes, asked.label_range)


def _admitted_predictions(
    family: ModelFamily,
    model: Any,
    part: Part,
    asked: Asked,
    rounds: int | None,
    eval_pred: np.ndarray | None = None,
) -> np.ndarray:
    """Predictions on the admitted rows; `eval_pred`, the whole model's on the evaluation rows, made
    already for the scores, is used instead of predicting them again."""
    return np.concatenate(
        [
            eval_pred
            if split == "eval" and rounds is None and eval_pred is not None
            else _predict(family, model, part, split, asked, rounds)
            for split in asked.admitted
        ]
    )


def moments(part: Part, family: ModelFamily, model: Any, asked: Asked) -> dict:
    """Sums a regressor's prediction spread is made from, per model (trained, base), over admitted rows."""
    return {
        key: partials.moments(_admitted_predictions(family, model, part, asked, rounds))
        for key, rounds in asked.predictions()
    }


def scores(part: Part, family: ModelFamily, model: Any, asked: Asked) -> dict:
    """Everything the report needs of one partition: the evaluation rows' scores (exact, or mergeable
    sums), learning-curve loss sums, leaf counts, and what the predictions set apart."""
    y = part.y("eval")
    pred = _predict(family, model, part, "eval", asked)
    out: dict = {}
    if asked.exact:
        out["score"] = _exact(asked, y, pred)
        out["stats"] = scoring.stats(
            asked.task, y, pred, asked.n_classes, asked.label_range, scored=out["score"]
        )
    else:
        out["partial"] = partials.partial(asked.task, y, pred, asked.n_classes, asked.label_range)
    if asked.loss_clip is not None:
        out["curve"] = [
            float(
                scoring.row_losses(
                    asked.task,
                    y,
                    _predict(family, model, part, "eval", asked, r),
                    asked.n_classes,
                    asked.residual_clip,
                ).sum()
            )
            for r in asked.checkpoints
        ]
    if asked.train and asked.leaves:
        out["trained_leaves"] = family.leaf_counts(
            model, part, "train", (asked.base_rounds, asked.total_rounds)
        )
    if asked.structure and asked.base_rounds:
        found = [family.leaf_counts(model, part, split, (0, asked.base_rounds)) for split in asked.admitted]
        out["base_leaves"] = partials.merge_leaves(found)
    if asked.structure:
        for key, rounds in asked.predictions():
            admitted = _admitted_predictions(family, model, part, asked, rounds, eval_pred=pred)
            if asked.exact:
                out[f"{key}_isolated"] = scoring.isolated_rows(
                    asked.task, admitted, len(admitted), asked.n_classes
                )
            else:
                found = partials.isolation(asked.task, admitted, asked.n_classes, asked.spreads.get(key))
                out[f"{key}_isolation"] = dict(found)
    if asked.importance:
        out["importance"] = _permutation(part, family, model, asked, y, pred)
    return out


def _exact(asked: Asked, y: np.ndarray, pred: np.ndarray) -> dict:
    try:
        return scoring.score(asked.task, y, pred, asked.n_classes)
    except ValueError as exc:
        raise Refusal(
            "evaluation_failed", "the model's predictions could not be scored on the evaluation rows"
        ) from exc


def partners(table: pa.Table, y: np.ndarray) -> np.ndarray:
    """The permutation's row for each evaluation row: the next one in a cycle of the rows ordered by a
    keyed hash of their content (features and label), so a random-looking shuffle that one row changes
    only locally. Remove a row and only the row before it in the cycle takes another value: with its own
    and the base's term, three loss terms move, the release's sensitivity (docs/privacy.md). A shuffle
    drawn for the number of rows would move every row's partner when one row comes or goes. Each
    column is hashed as its Arrow type says (numbers as float64), never as pandas infers from the values:
    one missing value turned an integer column into floats, and so every row's hash."""
    frame = as_pandas(table)
    frame["__label__"] = y.astype(np.float64) if y.dtype.kind in "biuf" else y
    keys = pd.util.hash_pandas_object(frame, index=False, hash_key=PERMUTATION_KEY).to_numpy()
    order = np.argsort(keys, kind="stable")
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.roll(order, -1)
    return out


def _permutation(
    part: Part, family: ModelFamily, model: Any, asked: Asked, y: np.ndarray, pred: np.ndarray
) -> dict[str, float] | None:
    """Each feature's clipped-loss increase on the evaluation rows when its column is shuffled."""
    if asked.loss_clip is None or not len(y):
        return None
    k, clip = asked.n_classes, asked.residual_clip
    base = scoring.row_losses(asked.task, y, pred, k, clip).sum()
    scores_ = {}
    table = part.eval.x.table()  # a shuffle needs each column whole: opt-in, evaluation rows only
    order = pa.array(partners(table, y))
    for name in table.column_names:
        index = table.schema.get_field_index(name)
        shuffled = table.set_column(index, name, table.column(name).take(order))
        moved = Part(
            part.train, Split(x=shuffled, y=part.eval.y), part.train_rows, part.eval_rows, labels=part.labels
        )
        after = _predict(family, model, moved, "eval", asked)
        scores_[name] = float(scoring.row_losses(asked.task, y, after, k, clip).sum() - base)
    return scores_


def measure(family: ModelFamily, model: Any, parts: Partitions, asked: Asked) -> Measured:
    """Map the report's counting over the partitions and merge what they send back."""
    if asked.task == "regression" and asked.structure and not asked.exact:
        spreads = parts.map(moments, family, model, asked)
        asked.spreads = {
            key: partials.spread(partials.merge([s[key] for s in spreads])) for key, _ in asked.predictions()
        }
    return combine(parts.map(scores, family, model, asked), asked)


def combine(found: list[dict], asked: Asked) -> Measured:
    if asked.exact:
        (only,) = found
        score, stats = only["score"], only["stats"]
        isolated = {key: only[f"{key}_isolated"] for key, _ in asked.predictions() if asked.structure}
    else:
        score, stats = partials.finish(
            partials.merge([f["partial"] for f in found]), asked.task, asked.n_classes
        )
        isolated = {
            key: partials.isolated(_histogram(found, f"{key}_isolation"))
            for key, _ in asked.predictions()
            if asked.structure
        }
    curve = None
    if asked.loss_clip is not None and asked.checkpoints:
        curve = [float(sum(f["curve"][i] for f in found)) for i in range(len(asked.checkpoints))]
    importance = None
    if asked.importance and all(f["importance"] is not None for f in found):
        importance = {
            name: float(sum(f["importance"][name] for f in found)) for name in found[0]["importance"]
        }
    return Measured(
        score=score,
        stats=stats,
        curve=curve,
        trained_leaf=partials.fewest_in_a_leaf(
            partials.merge_leaves([f.get("trained_leaves", []) for f in found])
        ),
        base_leaf=partials.fewest_in_a_leaf(partials.merge_leaves([f.get("base_leaves", []) for f in found])),
        isolated=isolated,
        importance=importance,
    )


def _histogram(found: list[dict], key: str) -> Counter:
    total: Counter = Counter()
    for f in found:
        total.update({int(k): v for k, v in f.get(key, {}).items()})
    return total


def evaluate(family: ModelFamily, model: Any, parts: Partitions, n_classes: int) -> dict:
    """The model's metrics (and confusion counts) on the evaluation rows, and nothing else."""
    rounds = family.rounds(model)
    asked = Asked(
        task=family.task(model),
        n_classes=n_classes,
        base_rounds=rounds["base"],
        total_rounds=rounds["total"],
        train=False,
        exact=len(parts) == 1,
    )
    return measure(family, model, parts, asked).score
