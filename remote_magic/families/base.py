"""The model-family interface, and the plain data a family works on.

Why it is long: the interface a family satisfies and every piece of plain data it is given (batches,
splits, labels, plans, partitions and the label rules) in one place, so a new family is written against
one module.

A family never stages rows itself and never decides what is released: it gets feature columns as Arrow
record batches and labels as a NumPy array (the shapes `Split` names), in partitions (partitions.py),
trains or scores, and returns raw numbers. The worker feeds it the admitted rows, streamed from DuckDB
and held in memory or, past the staging budget, spilled to Arrow files in the job folder; a cluster's
job driver, partitions staged on the cluster's machines; the dry run, mock rows.
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
from ..contract.query import is_number
from ..contract.wire import ModelBounds

# A training progress report: rounds done (of this job), and the latest metric per split and name.
Report = Callable[[int, dict[str, dict[str, float]]], None]
# A family reports progress at most this often (and its last round): each report is a message to the
# parent, a write to the job store and a wake-up of every long-poll on the job.
PROGRESS_EVERY_S = 0.2
# A DP trainer's questions to the trusted parent (dpboost/coordinator.py has their meaning):
# noise(values, l2, rho) -> the values with Gaussian noise; select(scores, linf, rho) -> a noisy argmax.
Noise = Callable[[list[float], float, float], list[float]]
# noise_many([(values, l2, rho), ...]) -> each values with its noise: the same releases as one `noise`
# call each, asked together (one round trip to the parent instead of one each).
NoiseMany = Callable[[list[tuple[list[float], float, float]]], list[list[float]]]
# The scores a select call gets are a float64 array: a worker sends them to the parent as they are.
Select = Callable[[np.ndarray, float, float], int]
# select_many([(scores, linf, rho), ...]) -> each one's noisy argmax, asked together as noise_many asks.
SelectMany = Callable[[list[tuple[np.ndarray, float, float]]], list[int]]
# A DP training's public plan, told to the parent before its first noise request: the trainer's settings
# (a dataclass), the sketched columns, the sketch's rho, whether it continues a base model.
Declare = Callable[[Any, list[str], float, bool], None]


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

    def merge_levels(self, rare: dict[str, set[str]], text: dict[str, set[str]]) -> None:
        """Merge these rare levels as the batches are read; `text`: each text column's levels once merged
        (across every partition of the job)."""
        self.rare, self._text = rare, text

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
    are notebook functions, present only for payloads the data owner approved. `rounds_unset`: the model
    left its rounds to the family (an estimator's `n_estimators` None), `rounds` being the most it trains.
    `stops_early`: the model asks to stop early (`early_stopping_rounds`), which a training refuses."""

    family: str
    params: dict
    rounds: int
    task: str
    base: bytes | None = None
    base_rounds: int = 0
    rounds_unset: bool = False
    preprocess: dict | None = None
    objective: Callable | None = field(default=None, repr=False)
    metric: Callable | None = field(default=None, repr=False)
    stops_early: bool = False


@dataclass
class Part:
    """One partition's admitted rows where they live, split into training and evaluation rows, with
    their row numbers in the dataset's file and the rows per text level (counted as they were staged,
    before rare levels merge); `labels` once the job fixed the classes; `state` whatever a family keeps
    here between calls (binned features, current margins, matrices)."""

    train: Split
    eval: Split
    train_rows: np.ndarray
    eval_rows: np.ndarray
    levels: dict[str, Counter] = field(default_factory=dict)
    labels: Labels | None = None
    state: dict[str, Any] = field(default_factory=dict)
    missing_label: int | None = None  # rows the staging left out for a missing label (None: not counted)

    def split(self, name: str) -> Split:
        return self.train if name == "train" else self.eval

    def y(self, name: str) -> np.ndarray:
        """The labels of a split as numbers (class codes, or floats)."""
        assert self.labels is not None, "the job encodes the labels before anything reads them"
        return self.labels.train if name == "train" else self.labels.eval


class Partitions(Protocol):
    """A job's admitted rows, partitioned where they live (implementations: partitions.InProcess here,
    and the cluster's in the server's cluster/partitions.py).

    A family trains against `map` and gets back what its function returned on each partition. A family
    whose library has its own distributed training may use it instead: `dask` is the cluster's handle
    (its client, the partitions' futures, the collective's settings), None on one machine."""

    dask: Any

    def __len__(self) -> int: ...

    def map(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """`fn(part, *args)` on every partition, on the machine that holds it (the same `Part` object
        each time, so its `state` lasts); the results in order. A result must be an aggregate: a cluster
        refuses anything but a small dict or list."""
        ...


@dataclass(frozen=True)
class PrivateOrder:
    """What the trusted parent orders for a DP training: its budget (zCDP `rho`, every bit of it spent
    through `Run.noise` and `Run.select`, which the parent answers and counts), the data owner's public
    numeric ranges and text levels per column (split candidates at no cost; a column without them gets
    candidates from a DP sketch paid from `rho`), the public range of a regression label, and the delta
    a data-chosen text level may add."""

    rho: float
    column_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    column_levels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    label_range: tuple[float, float] | None = None
    delta: float = 1e-7


@dataclass
class Run:
    """What the job around a training gives the family: its threads, a progress report, and `check`,
    which raises when the job must stop (a cancel, a lost machine). For a DP training, `private` is the
    parent's order and `noise` and `select` ask the trusted parent (its release desk draws with OpenDP
    and counts the cost against the order); the worker protocol carries each as a request and its
    answer. `declare` tells the parent the training's public plan first, which it checks every request
    against; `noise_many` and `select_many`, where given, ask several releases in one message. A test
    passes seeded NumPy noise instead (and no `declare`)."""

    threads: int
    report: Report
    check: Callable[[], None] = lambda: None
    public_levels: bool = False  # the noisy modes: text levels never from the evaluation rows
    public_rows: int | None = None  # the training rows' noisy count (noisy modes): what work is sized by
    private: PrivateOrder | None = None
    noise: Noise | None = None
    select: Select | None = None
    declare: Declare | None = None
    noise_many: NoiseMany | None = None
    select_many: SelectMany | None = None


class ModelFamily(Protocol):
    """One kind of model: how to recognise it, canonicalise and bound it, train, score and export it.

    Two halves. The plan half reads a decoded model (in the confined worker, and in the dry run). The
    partition half trains and reads a model on `Partitions` (partitions.py): `train` and `score` run
    on the machine that coordinates the job and map the family's own functions over the partitions;
    `predict` and `leaf_counts` run where a partition's rows are (the job's report builder maps them,
    families/aggregates.py). `train` and `score` return the family's own trained-model object, which
    the other methods read; on a cluster it travels to the partitions, so it must pickle."""

    name: str

    def recognises(self, model: object) -> bool: ...

    def canonical(self, model: object, custom_code: bool = False) -> Plan: ...

    def continued(self, plan: Plan | None, saved: bytes) -> Plan:
        """The plan that continues (or, without a plan, evaluates) a model saved by `export`."""
        ...

    def check_bounds(self, plan: Plan, bounds: ModelBounds) -> None: ...

    def check_columns(self, plan: Plan, columns: list[str]) -> None:
        """Refuse (`feature_mismatch`) a fitted model whose input columns are not the job's, read from the
        model alone, before any row is read."""
        ...

    def unrecorded_categories(self, plan: Plan) -> list[str]:
        """A fitted model's categorical features whose categories it does not record, read from the
        model alone (`check_public_levels`)."""
        ...

    def predicted_classes(self, plan: Plan) -> int | None:
        """How many classes a fitted classifier plan's model predicts (None: not fitted), read from the
        model alone, so that an evaluation's public classes are checked before any row is read."""
        ...

    def portable_base(self, plan: Plan) -> bytes:
        """The plan's base model in the family's saved form, re-written from the parsed model: what a
        cluster gets instead of the payload."""
        ...

    def train(self, plan: Plan, parts: Partitions, classes: list[str], run: Run) -> Any:
        """Continue training the plan's base model on the partitions' training rows, watching their
        evaluation rows; `classes` names the class codes of a classifier's labels (empty: regression)."""
        ...

    def score(self, plan: Plan, parts: Partitions, classes: list[str], run: Run) -> Any:
        """The plan's base model, ready to be evaluated without training."""
        ...

    def predict(self, trained: Any, part: Part, split: str, rounds: int | None = None) -> Any:
        """Predictions (probabilities for classifiers) on a partition's `split` ("train" or "eval")
        rows, using the first `rounds` boosting rounds (all when None)."""
        ...

    def leaf_counts(self, trained: Any, part: Part, split: str, rounds: tuple[int, int]) -> list:
        """Rows of a partition's `split` reaching each leaf of the trees of rounds `(start, stop)`, one
        array of counts per tree by leaf id (they add up across partitions); empty for a model without
        trees."""
        ...

    def history(self, trained: Any) -> dict | None:
        """The per-round metric on the training and evaluation rows, for the rounds trained here."""
        ...

    def importance(self, trained: Any) -> dict[str, float]: ...

    def rounds(self, trained: Any) -> dict[str, int]: ...

    def task(self, trained: Any) -> str:
        """binary, multiclass or regression: what the trained model turned out to be."""
        ...

    def training(self, trained: Any) -> dict[str, float | int] | None:
        """What a DP training cost and the noise it added (rho, trees, sigma_gradient, sigma_hessian);
        None for a model trained without DP."""
        ...

    def release_facts(self, trained: Any) -> dict[str, float | int | bool | None]:
        """What the family's own model-release rule reads (privacy/model_release.py), such as the
        hyperparameters; the leaf floor is counted by the job (`leaf_counts`)."""
        ...

    def export(self, trained: Any, folder: Path) -> None:
        """Save the trained model (`MODEL_FILE`) and the parameters it was trained with (`PARAMS_FILE`)
        in the job folder, where a later release or registration reads them."""
        ...


STOPS_EARLY = (
    "early_stopping_rounds: the server trains the rounds you set and never stops early (stopping on the "
    "evaluation rows would pick the model by the rows that score it, and in the DP modes read them "
    "outside the budget); set n_estimators where the eval curve levels off (result.history, or --curve K "
    "in the DP modes)"
)


def check_kind(kind: str, fitted: bool, pipeline: bool, stops_early: bool = False) -> None:
    """What a job of this kind needs of its model, known from the model alone: checked by the dry run, at
    submit (from the payload scan, before any job exists) and in the worker. A training that asks to
    stop early is refused by name rather than run to its rounds without a word."""
    if kind == "train" and stops_early:
        raise Refusal("parameter_out_of_bounds", STOPS_EARLY)
    if kind == "evaluate" and pipeline:
        raise Refusal("unsupported_model", "evaluate takes a bare XGBoost model; send a Pipeline with train")
    if kind == "evaluate" and not fitted:
        raise Refusal("unsupported_model", "evaluation needs a fitted model; fit it first")


def is_classifier_task(task: str) -> bool:
    return task in ("classification", "binary", "multiclass")


def check_classes_fit(task: str, classes: list[str] | None) -> None:
    """A spec's classes are a classifier's: on a regressor they would admit only the rows whose label is
    one of them, and the job would fail on too few rows with advice to widen the filter. Known from the
    model and the spec alone, so refused before any row is read (at submit, in the worker, by the dry run)."""
    if classes is not None and not is_classifier_task(task):
        raise Refusal(
            "invalid_spec",
            "classes (--classes) are for a classifier, and this model is a regressor: they would admit only "
            "the rows whose label is one of them; leave them out, or send an XGBClassifier",
        )


def check_public_classes(family: ModelFamily, plan: Plan, label: str, classes: list[str] | None) -> None:
    """In the noisy modes a classifier's classes are public before any row is read: the owner's declared
    ones or the spec's, as many as a fitted model predicts. Taken from the rows, a class that one row
    holds would show in the counts (or the model), or refuse the job on its noisy count, exactly when
    that row is in (docs/privacy.md, "A classifier's classes")."""
    if not is_classifier_task(plan.task):
        return
    if classes is None:
        raise Refusal(
            "invalid_spec",
            f"a classifier on this dataset takes the classes of {label!r} before any row is read: name "
            f"them in the spec (`classes`: the label's values, in the order of the model's codes 0, 1, ...; "
            f"`--classes` in a magic), or ask the data owner to declare `column_levels.{label}`",
        )
    predicted = family.predicted_classes(plan)
    if predicted is not None and predicted != len(classes):
        raise Refusal(
            "invalid_model",
            f"the model predicts {predicted} classes and the label {label!r} has {len(classes)}: {classes}",
        )
    asked = plan.params.get("num_class")  # (XGBClassifier's default binary objective turns multi: itself)
    if asked is not None and int(asked) != len(classes):
        raise Refusal(
            "invalid_model",
            f"the model's num_class = {asked} does not fit the label {label!r}, which has {len(classes)} "
            f"classes: {classes}; leave it unset (XGBoost takes it from the classes)",
        )


def check_public_levels(family: ModelFamily, plan: Plan) -> None:
    """In the noisy modes a fitted model's text features (an evaluation's, a continued base's) are read
    by the categories it records, never by the rows' levels; a model without them is refused before any
    row is read, and so is a Pipeline, whose fitted steps fail or not on the rows' own values (an
    encoder that meets a level it was not given: `not_released` exactly when one row is in). See
    docs/privacy.md, "Text levels in the noisy modes"."""
    if plan.preprocess is not None:
        raise Refusal(
            "unsupported_model",
            "on this dataset a Pipeline is not run: whether its fitted steps fail depends on the rows' "
            "values; send a bare XGBoost model (text columns as pandas categoricals)",
        )
    missing = family.unrecorded_categories(plan)
    if missing:
        raise Refusal(
            "invalid_model",
            f"the model does not record the categories of {', '.join(missing)}, and on this dataset they "
            "cannot be read from the rows: fit it on a pandas categorical column (XGBoost 3.1 or later "
            "keeps its categories with the model)",
        )


def present_labels(y: np.ndarray) -> np.ndarray:
    """The labels that are not missing (a missing label is not a class)."""
    if y.dtype == object:
        return np.array([v for v in y if v is not None and v == v], dtype=object)
    if y.dtype.kind == "f":
        return y[~np.isnan(y)]
    return y


def label_facts(y: np.ndarray, classifier: bool) -> dict:
    """What the label rules read of some rows' labels, in a form that merges across partitions: a
    classifier's distinct labels and whether any is missing; a regressor's whether all are numbers."""
    if classifier:
        present = present_labels(y)
        return {"values": np.unique(present).tolist(), "missing": len(present) < len(y), "dtype": y.dtype.str}
    try:
        np.asarray(y, dtype=float)
    except (TypeError, ValueError):
        return {"numeric": False}
    return {"numeric": True}


def label_values(
    facts: list[dict], label: str, classifier: bool, declared: list[str] | None = None
) -> np.ndarray | None:
    """The label's rules, once its rows are admitted: a regressor's labels are numbers, a classifier's
    are never missing. A classifier's classes are the owner's `declared` ones (the staging query admitted
    no other), else the sorted distinct labels (None for a regressor)."""
    if not classifier:
        if not all(f["numeric"] for f in facts):
            raise Refusal("invalid_spec", f"label {label!r} is not numeric")
        return None
    if any(f["missing"] for f in facts):
        raise Refusal("invalid_spec", f"label {label!r} has missing values in the admitted rows")
    if declared is not None:
        return declared_values(declared, np.dtype(facts[0]["dtype"]) if facts else np.dtype(object))
    return np.unique(np.array([v for f in facts for v in f["values"]]))


def declared_values(declared: list[str], dtype: np.dtype) -> np.ndarray:
    """Declared classes (text, as DuckDB casts the label to text) as the label column's values, sorted."""
    if dtype.kind == "b":
        return np.unique(np.array([v.lower() == "true" for v in declared]))
    if dtype.kind in "iuf":
        numbers = [float(v) for v in declared if is_number(v)]
        return np.unique(np.array(numbers, dtype=np.float64).astype(dtype))
    return np.unique(np.array(declared, dtype=object))


def declared_labels(column: pa.Array | pa.ChunkedArray, declared: list[str] | None) -> np.ndarray:
    """Admitted labels as NumPy values; under declared classes, each numeric label as the declared class
    the staging query admitted it as (`contract.query.declared_label` compares them as doubles), so a
    label that only rounds to a class (an integer past 2**53) or a decimal number takes the class's own
    value and the job's path: no admitted row's label can make a job fail where its class would not."""
    if declared is None:
        return column.to_numpy()
    if pa.types.is_decimal(column.type):
        column = column.cast(pa.float64(), safe=False)
    y = column.to_numpy()
    if y.dtype.kind not in "iuf" or not len(y):
        return y
    values = declared_values(declared, y.dtype)
    if not len(values):
        return y
    at = np.searchsorted(values.astype(np.float64), y.astype(np.float64)).clip(0, len(values) - 1)
    return values[at]


def encode(y: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    """Labels as numbers: class codes into `values`, or floats."""
    return np.searchsorted(values, y).astype(int) if values is not None else np.asarray(y, dtype=float)


def class_names(values: np.ndarray | None) -> list[str]:
    return [str(v) for v in values] if values is not None else []


def encode_labels(y_train: np.ndarray, y_eval: np.ndarray, label: str, task: str) -> Labels:
    """Labels of rows on one machine as numbers; classes are the sorted distinct values, named by
    their text."""
    classifier = is_classifier_task(task)
    values = label_values(
        [label_facts(y_train, classifier), label_facts(y_eval, classifier)], label, classifier
    )
    return Labels(encode(y_train, values), encode(y_eval, values), class_names(values))
