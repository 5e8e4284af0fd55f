"""The model-family interface, and the plain data a family works on.

A family never stages rows itself and never decides what is released: it gets feature columns as Arrow
record batches and labels as a NumPy array (the shapes `Split` names), trains or scores, and returns raw
numbers. The worker feeds it the admitted rows, streamed from DuckDB and held in memory or, past the
staging budget, spilled to Arrow files in the job folder; the dry run feeds it mock rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from ..contract import rows
from ..contract.codes import Refusal
from ..contract.wire import ModelBounds

# A training progress report: rounds done (of this job), and the latest metric per split and name.
Report = Callable[[int, dict[str, dict[str, float]]], None]


class Batches:
    """Feature columns of some rows as Arrow record batches, read from the start again on every pass
    (a quantile matrix reads its rows more than once), never as one copy of the whole table.

    Each chunk is a batch held in memory or an Arrow IPC stream file (in the job folder) that batches
    were spilled to because they outgrew the staging budget; then `cache` is the path prefix where an
    external-memory matrix keeps its pages. Rare text levels (`rows.rare_levels`) are merged as the
    batches are read; `text` holds the levels of each text column once merged, when the stager counted
    them on its way through."""

    def __init__(
        self,
        schema: pa.Schema,
        chunks: Iterable[pa.RecordBatch | Path] = (),
        cache: str | None = None,
        text: dict[str, set[str]] | None = None,
        rare: dict[str, set[str]] | None = None,
    ):
        self.schema = schema
        self.chunks = list(chunks)
        self.cache = cache
        self.rare = rare or {}
        self._text = text

    @classmethod
    def of(cls, table: pa.Table) -> Batches:
        """Batches of a table that is already in memory (mock rows, tests)."""
        return cls(table.schema, table.to_batches())

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for chunk in self.chunks:
            if isinstance(chunk, pa.RecordBatch):
                yield rows.merge_rare(chunk, self.rare)
                continue
            with pa.OSFile(str(chunk)) as source:  # read, not memory-mapped: it counts against no limit
                for batch in pa.ipc.open_stream(source):
                    yield rows.merge_rare(batch, self.rare)

    def __add__(self, other: Batches) -> Batches:
        """These rows, then the other's (to read, not to build an external-memory matrix from)."""
        text = {
            name: self.text_values().get(name, set()) | found for name, found in other.text_values().items()
        }
        return Batches(self.schema, self.chunks + other.chunks, None, text, self.rare | other.rare)

    @property
    def column_names(self) -> list[str]:
        return self.schema.names

    @property
    def files(self) -> list[Path]:
        return [chunk for chunk in self.chunks if isinstance(chunk, Path)]

    def table(self) -> pa.Table:
        """Every row in one table: only for the few steps that need them all at once (preprocessors)."""
        return pa.Table.from_batches(list(self), schema=self.schema)

    def text_values(self) -> dict[str, set[str]]:
        """The levels of each text column."""
        if self._text is None:
            counts: dict[str, Counter] = {}
            for batch in self:
                rows.count_levels(counts, batch)
            self._text = {name: set(found) for name, found in counts.items()}
        return self._text


@dataclass
class Split:
    """Feature columns (dataset features, then derived ones) and the raw label column of some rows.

    `x` may be given as a table (it becomes `Batches` held in memory)."""

    x: Batches
    y: np.ndarray

    def __post_init__(self) -> None:
        if isinstance(self.x, pa.Table):
            self.x = Batches.of(self.x)


@dataclass
class Labels:
    """Labels as numbers: class codes 0..k-1 (classes named by their text), or floats for regression."""

    train: np.ndarray
    eval: np.ndarray
    classes: list[str]


@dataclass
class Plan:
    """The canonical form of a submitted model: what crosses into training, as data.

    `params` are JSON values, `base` the base model in the family's own byte format (or None),
    `preprocess` a Pipeline's preprocessors as class names and JSON parameters. `objective` and `metric`
    are notebook functions, present only for payloads the data owner approved."""

    family: str
    params: dict
    rounds: int
    task: str
    base: bytes | None = None
    base_rounds: int = 0
    preprocess: dict | None = None
    objective: Callable | None = field(default=None, repr=False)
    metric: Callable | None = field(default=None, repr=False)


class ModelFamily(Protocol):
    """One kind of model: how to recognise it, canonicalise and bound it, train, score and export it.

    `train` and `score` return the family's own trained-model object; the other methods read it."""

    name: str

    def recognises(self, model: object) -> bool: ...

    def canonical(self, model: object, custom_code: bool = False) -> Plan: ...

    def continued(self, plan: Plan | None, saved: bytes) -> Plan:
        """The plan that continues (or, without a plan, evaluates) a model saved by `export`."""
        ...

    def check_bounds(self, plan: Plan, bounds: ModelBounds) -> None: ...

    def train(
        self, plan: Plan, train: Split, eval: Split, labels: Labels, threads: int, report: Report
    ) -> Any:
        """Continue training the plan's base model on the training rows, watching the evaluation rows."""
        ...

    def score(self, plan: Plan, eval: Split, labels: Labels, threads: int) -> Any:
        """The plan's base model, ready to be evaluated without training."""
        ...

    def predict(self, trained: Any, rows: Split | None = None, rounds: int | None = None) -> Any:
        """Predictions (probabilities for classifiers) on the evaluation rows, or on `rows`, using the
        first `rounds` boosting rounds (all when None)."""
        ...

    def smallest_leaf(
        self, trained: Any, rows: Split | None = None, rounds: tuple[int, int | None] = (0, None)
    ) -> int | None:
        """The fewest rows (the training rows, or `rows`) in any non-empty leaf of the trees of the
        rounds `(start, stop)` (stop None: the last)."""
        ...

    def evaluate(self, trained: Any) -> dict:
        """Exact metrics (and, for classifiers, the confusion counts) on the evaluation rows."""
        ...

    def history(self, trained: Any) -> dict | None:
        """The per-round metric on the training and evaluation rows, for the rounds trained here."""
        ...

    def importance(self, trained: Any) -> dict[str, float]: ...

    def rounds(self, trained: Any) -> dict[str, int]: ...

    def task(self, trained: Any) -> str:
        """binary, multiclass or regression: what the trained model turned out to be."""
        ...

    def leaf_facts(self, trained: Any) -> dict:
        """What the model-release rules read: leaf populations on the training rows, hyperparameters."""
        ...

    def export(self, trained: Any, folder: Path) -> None:
        """Save the trained model and the parameters it was trained with in the job folder (where a later
        release or registration reads them)."""
        ...


def check_kind(kind: str, fitted: bool, pipeline: bool) -> None:
    """What an evaluation needs of its model, known from the model alone: checked by the dry run, at
    submit (from the payload scan, before any job exists) and in the worker."""
    if kind == "evaluate" and pipeline:
        raise Refusal("unsupported_model", "evaluate takes a bare XGBoost model; send a Pipeline with train")
    if kind == "evaluate" and not fitted:
        raise Refusal("unsupported_model", "evaluation needs a fitted model; fit it first")


def is_classifier_task(task: str) -> bool:
    return task in ("classification", "binary", "multiclass")


def encode_labels(y_train: np.ndarray, y_eval: np.ndarray, label: str, task: str) -> Labels:
    """Labels as numbers; classes are the sorted distinct values, named by their text."""
    if not is_classifier_task(task):
        try:
            return Labels(np.asarray(y_train, dtype=float), np.asarray(y_eval, dtype=float), [])
        except (TypeError, ValueError) as exc:
            raise Refusal("invalid_spec", f"label {label!r} is not numeric") from exc
    both = np.concatenate([np.asarray(y_train), np.asarray(y_eval)])
    missing = (
        np.isnan(both).any()
        if both.dtype.kind == "f"
        else both.dtype == object and any(v is None or v != v for v in both)
    )
    if missing:
        raise Refusal("invalid_spec", f"label {label!r} has missing values in the admitted rows")
    classes, codes = np.unique(both, return_inverse=True)
    return Labels(
        codes[: len(y_train)].astype(int), codes[len(y_train) :].astype(int), [str(c) for c in classes]
    )
