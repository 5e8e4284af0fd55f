"""The wire schema shared by the notebook side and the server.

Defined once, here; the server imports it so that the OpenAPI document, the request validation and the
client's parsing cannot drift apart. Every response model forbids extra fields: what leaves the server is
exactly what is declared here (numbers and fixed strings), nothing else.

Why it is long: it is the whole HTTP contract, one small model per message, kept in one file so that
what may leave the server can be reviewed in one place.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

JobKind = Literal["train", "evaluate"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "awaiting_approval"]
Stage = Literal["queued", "starting", "staging", "training", "evaluating", "done"]
Task = Literal["binary", "multiclass", "regression"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
NAME_RULE = "a name is 1 to 64 of a-z, A-Z, 0-9 and _, not starting with a digit"  # IDENT, in words
DATASET_REF = r"^[A-Za-z_][A-Za-z0-9_]{0,63}(@[1-9][0-9]{0,8})?$"


def dataset_ref(text: str) -> tuple[str, int | None]:
    """`"claims@3"` -> ("claims", 3); `"claims"` -> ("claims", None), the latest version."""
    name, _, version = text.partition("@")
    return name, int(version) if version else None


# dp: the DP trainer and every released number an OpenDP draw under a budget (the default); dp_eval_only:
# DP releases of a model trained without DP (weaker, the owner's explicit choice); rules: suppression and
# rounding
PrivacyMode = Literal["dp", "dp_eval_only", "rules"]


def is_dp(mode: str | None) -> bool:
    """Whether a privacy mode releases OpenDP draws under a budget: `dp` (DP training and DP evaluation)
    and `dp_eval_only` (non-private training, DP evaluation: the owner's explicit, weaker choice)."""
    return mode in ("dp", "dp_eval_only")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalFraction(_Strict):
    """Hold out a fraction of the admitted rows, chosen by the server from a hash of the id and the seed."""

    fraction: float = Field(gt=0.0, lt=1.0)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class EvalWhere(_Strict):
    """Evaluate on the admitted rows that match this filter; train on the others."""

    where: str = Field(min_length=1, max_length=2000)


def _class_text(value: object) -> object:
    """A class as text, as an owner declares one (`column_levels`): 1 -> "1", True -> "true" (a NumPy
    number too)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, (int, float)) else value


ClassName = Annotated[str, BeforeValidator(_class_text), Field(min_length=1, max_length=256)]


class DatasetSpec(_Strict):
    """Which rows are admitted to training and evaluation, the label and the features."""

    dataset: str = Field(
        pattern=DATASET_REF, description="A dataset name; `name@N` pins version N (default: the latest)."
    )
    label: str = Field(min_length=1, max_length=128)
    features: list[str] | None = Field(default=None, max_length=1000)
    where: str | None = Field(default=None, max_length=2000)
    eval: EvalFraction | EvalWhere | None = None
    derive: (
        Annotated[
            dict[Annotated[str, Field(pattern=IDENT)], Annotated[str, Field(min_length=1, max_length=2000)]],
            # The schema's patternProperties alone would let any other key through: say it is refused.
            Field(json_schema_extra={"additionalProperties": False}),
        ]
        | None
    ) = Field(
        default=None,
        max_length=50,
        description="New feature columns computed on the server, name -> expression over feature "
        "columns (arithmetic, comparisons, CASE WHEN, ln, exp, abs, least, greatest, coalesce); at most "
        "8,000 characters in all.",
    )
    classes: list[ClassName] | None = Field(
        default=None,
        min_length=2,
        max_length=1000,
        description="A classifier's classes, where the data owner declared none (`column_levels`): "
        "public, fixed before any row is read; only rows of these classes are admitted. The client "
        "fills it from a fitted classifier's `classes_`.",
    )


class ErrorDetail(_Strict):
    code: str
    message: str


class ErrorBody(_Strict):
    error: ErrorDetail


class ColumnInfo(_Strict):
    name: str
    dtype: str
    role: Literal["feature", "label", "id", "excluded"]
    inferred: bool = Field(
        default=False, description="The type was inferred when the snapshot was taken, not declared."
    )


class PolicyInEffect(_Strict):
    """The disclosure rules a released answer was made under, so a client says what they were."""

    min_count: int = Field(description="Counts below this are suppressed (null).")
    round_to: int = Field(description="Released counts are multiples of this.")
    significant_digits: int = Field(description="Released metrics are rounded to this many digits.")
    min_rows: int = Field(description="The fewest rows a training or evaluation set may have.")
    min_class_rows: int = Field(description="The fewest rows per class in a set.")
    privacy: PrivacyMode = Field(
        default="rules",
        description="dp: DP training and numbers drawn by OpenDP under a budget; dp_eval_only: the same "
        "numbers of a model trained without DP; rules: rounding only.",
    )
    rho_per_job: float | None = Field(default=None, description="zCDP cost of a job's default releases.")
    rho_cap: float | None = Field(default=None, description="The budget per user and dataset (zCDP rho).")
    rho_train: float | None = Field(
        default=None, description="zCDP cost of the DP trainer in a train job (mode dp), beside rho_per_job."
    )


class ModelBounds(_Strict):
    """Hyperparameter bounds of a dataset: a model beyond them is refused, never clipped."""

    max_n_estimators: int
    max_depth: int
    max_bin: int
    max_threads: int = Field(description="nthread / n_jobs may not exceed this.")
    devices: list[str] = Field(default_factory=lambda: ["cpu"])
    min_leaf_rows: int | None = Field(
        default=None,
        description="Mode dp: every leaf must hold this many rows (min_child_weight must ensure it).",
    )

    def for_kind(self, kind: str) -> ModelBounds:
        """The bounds a job of this kind keeps: the leaf rule is about trees trained in the job, and an
        evaluation trains none."""
        return self if kind == "train" else self.model_copy(update={"min_leaf_rows": None})


class RetypedColumn(_Strict):
    name: str
    before: str
    after: str


class SchemaChange(_Strict):
    """How a version's columns differ from the version before it."""

    added: list[str] = Field(default_factory=list)
    dropped: list[str] = Field(default_factory=list)
    retyped: list[RetypedColumn] = Field(default_factory=list)


class VersionInfo(_Strict):
    """One immutable snapshot of a dataset: never a value, only its number, time, size and schema."""

    number: int
    created: str
    rows: int | None = Field(
        description="Row count rounded by the disclosure policy (mode dp: a noisy count); null if suppressed."
    )
    schema_hash: str = Field(description="Equal for two versions exactly when their columns and types are.")
    schema_change: SchemaChange | None = Field(
        default=None, description="Columns added, dropped or retyped since the version before; null if none."
    )


class DatasetInfo(_Strict):
    name: str
    description: str = ""
    rows: int | None = Field(
        description="Row count rounded by the disclosure policy (mode dp: a noisy count); null if suppressed."
    )
    columns: list[ColumnInfo]
    policy: PolicyInEffect | None = None
    bounds: ModelBounds | None = None
    version: int | None = Field(
        default=None, description="The version these columns and rows are of (the latest unless pinned)."
    )
    versions: list[VersionInfo] = Field(
        default_factory=list, description="Every version still served, oldest first."
    )
    unavailable: str | None = Field(
        default=None,
        description="Why no job can use the dataset now (the owner's snapshot of it failed); null if it can.",
    )
    column_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="The data owner's public range of a numeric feature (the DP trainer's split candidates).",
    )
    column_levels: dict[str, list[str]] = Field(
        default_factory=dict, description="The data owner's public levels of a text feature."
    )
    label_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="The data owner's public range of a regression label (DP training's and metrics' clip).",
    )


class Whoami(_Strict):
    user: str
    datasets: list[str]


class Health(_Strict):
    status: Literal["ok", "degraded"]
    version: str
    store: Literal["ok", "error"]
    workers: int = Field(description="Worker processes the scheduler may run at once.")
    running: int
    queued: int
    scheduler: Literal["running", "draining", "stopped"] = Field(
        default="running",
        description="The worker pool: starting jobs, finishing them before a shutdown, or stopped.",
    )
    auth: list[Literal["token", "jupyterhub"]] = Field(
        default_factory=lambda: ["token"],
        description="Bearer tokens this server accepts: its own, and JupyterHub API tokens if configured.",
    )


class MetricPoint(_Strict):
    name: str
    train: float | None = None
    eval: float | None = None
    eval_interval: list[float] | None = Field(
        default=None, description="The 95% interval [low, high] of `eval` (mode dp: it includes noise)."
    )


class Progress(_Strict):
    stage: Stage
    round: int = 0
    total_rounds: int = 0
    metric: MetricPoint | None = None


class Registration(_Strict):
    """What became of a job's request to register its model."""

    state: Literal["registered", "skipped", "refused"]
    version: str | None = Field(default=None, description="The registered version, e.g. churn@3.")
    message: str


class JobStatus(_Strict):
    id: str
    dataset: str
    dataset_version: int | None = Field(default=None, description="The dataset version the job runs on.")
    kind: JobKind
    state: JobState
    progress: Progress
    submitted_at: str
    started_at: str | None = None
    finished_at: str | None = None
    error: ErrorDetail | None = None
    main_metric: MetricPoint | None = None
    model: str | None = Field(default=None, description="The submitted model's class, e.g. XGBClassifier.")
    rounds: int | None = Field(default=None, description="Boosting rounds, once the worker knows them.")
    isolation: dict[str, str] | None = Field(default=None, description="The confinement the worker had.")
    version: int = Field(description="Increases on every change; pass it as `since` to long-poll.")
    base_model: str | None = Field(default=None, description="The registered version it continued.")
    recipe: str | None = Field(default=None, description="The recipe that started it, if any.")
    trigger: str | None = Field(default=None, description="What made the recipe run.")
    registration: Registration | None = None
    model_file: Literal["kept", "registered", "pruned"] | None = Field(
        default=None, description="Whether the trained model is still on the server."
    )
    result: JobResult | None = Field(
        default=None,
        description="The released result: only in the answer of `GET /jobs/{id}?result=true` once the job "
        "succeeded (a waiting client gets it with the final status, in one round trip).",
    )


JOB_LIST_MAX = 500


class JobListQuery(_Strict):
    """`GET /v1/jobs`'s bounds, which `%remote_jobs --limit` checks before it asks."""

    limit: int = Field(default=100, ge=1, le=JOB_LIST_MAX)


class JobList(_Strict):
    jobs: list[JobStatus]


class History(_Strict):
    metric: str
    train: list[float] = Field(default_factory=list)
    eval: list[float] = Field(default_factory=list)
    rounds: list[int] | None = Field(
        default=None,
        description="The boosting round of each point (mode dp: K checkpoints); null: every round.",
    )
    eval_intervals: list[list[float]] | None = Field(
        default=None, description="95% interval of each eval point (mode dp)."
    )


class ReleaseOptions(_Strict):
    """What a job releases besides its default metrics; in mode dp each costs more of the budget."""

    confusion: bool = Field(default=False, description="The confusion matrix (classifiers).")
    curve: int = Field(default=0, ge=0, le=10, description="Eval learning-curve checkpoints; 0: none.")
    importance: int = Field(
        default=0,
        ge=0,
        le=10,
        description="The top-k features by permutation importance on eval rows; 0: none.",
    )


def curve_problem(kind: str, curve: int, name: str = "curve") -> str | None:
    """Why a job cannot release the curve it asks for, or None: the curve follows the rounds a training
    adds, and an evaluation adds none, so it would be charged for no points."""
    if kind == "evaluate" and curve:
        return f"{name} follows the rounds a training adds, and an evaluation adds none: leave it out (0)"
    return None


class PrivacyReport(_Strict):
    """What an answer cost under differential privacy (zCDP), and what is left of the budget."""

    rho: float = Field(description="The zCDP cost of this answer (0 for a repeat).")
    epsilon: float = Field(description="The same cost as (epsilon, delta)-DP at `delta`.")
    delta: float
    rho_spent: float = Field(description="Spent so far by this user on this dataset.")
    rho_cap: float
    rho_remaining: float
    repeated: bool = Field(description="True for the stored answer to an identical earlier request.")


class DPTraining(_Strict):
    """The DP trainer's part of a job (mode dp): what training cost and the noise it added. A model so
    trained is itself a DP release, so the analyst may download it without the data owner's approval."""

    rho: float = Field(description="The zCDP cost of training (part of the job's `privacy.rho`).")
    epsilon: float = Field(description="The same cost as (epsilon, delta)-DP at the job's delta.")
    trees: int = Field(ge=0, description="Trees the DP trainer added.")
    sigma_gradient: float = Field(description="The Gaussian noise's sd on each leaf's gradient sum.")
    sigma_hessian: float = Field(description="The Gaussian noise's sd on each leaf's hessian sum.")


class ClassCount(_Strict):
    label: str
    count: int | None = Field(description="Rounded count; null when suppressed.")


class SplitSummary(_Strict):
    rows: int | None
    classes: list[ClassCount] = Field(default_factory=list)


class DroppedRows(_Strict):
    """Rows the filter admitted that were left out of every split, and why."""

    reason: Literal["missing label"]
    rows: int | None = Field(description="Released like the other counts (noisy in mode dp); null: too few.")


class Summary(_Strict):
    train: SplitSummary | None = None
    eval: SplitSummary
    dropped: list[DroppedRows] = Field(
        default_factory=list, description="Rows admitted by the filter but left out; empty: not counted."
    )


class SpecUsed(_Strict):
    """The spec a job ran with, as the server resolved it: what the defaults and the catalog filled in."""

    label: str
    where: str | None = None
    eval: EvalFraction | EvalWhere | None = Field(
        description="The evaluation rows: a held-out fraction (train's default 0.2, seed 0) or a filter; "
        "null: every admitted row (evaluate)."
    )
    features: list[str] = Field(description="The model's input columns in order, derived ones last.")
    derived: list[str] = Field(default_factory=list, description="The derived columns among the features.")
    derive: dict[str, str] = Field(
        default_factory=dict,
        description="The derived columns' expressions, as the spec gave them: a downloaded model computes "
        "them from your rows, as the server did.",
    )


class ConfusionMatrix(_Strict):
    labels: list[str]
    counts: list[list[int | None]] = Field(
        description="Rows: true class, columns: predicted; null = suppressed."
    )


class Rounds(_Strict):
    base: int
    new: int
    total: int


class JobResult(_Strict):
    job_id: str
    dataset: str
    dataset_version: int | None = Field(default=None, description="The dataset version it was computed on.")
    kind: JobKind
    task: Task
    metrics: dict[str, float | None] = Field(description="Released metrics; null: not available (see notes).")
    intervals: dict[str, list[float]] = Field(
        default_factory=dict, description="95% interval [low, high] of each metric (mode dp)."
    )
    history: History | None = None
    feature_importance: dict[str, float] = Field(
        default_factory=dict, description="Average gain per split of each feature (mode rules only)."
    )
    importance_ranking: list[str] | None = Field(
        default=None, description="Top features by permutation importance on eval rows, best first (mode dp)."
    )
    summary: Summary
    confusion_matrix: ConfusionMatrix | None = None
    rounds: Rounds
    ran_with: SpecUsed | None = Field(default=None, description="The spec as the server resolved it.")
    policy: PolicyInEffect | None = Field(
        default=None, description="The rules this result was released under."
    )
    privacy: PrivacyReport | None = Field(default=None, description="Present in mode dp.")
    training: DPTraining | None = Field(
        default=None, description="Present when the DP trainer trained the model: it may be downloaded."
    )
    notes: list[str] = Field(default_factory=list, description="Why a value is not released, and such.")


class HistogramBin(_Strict):
    lower: float | None = Field(description="Inclusive lower edge; null: open-ended (no minimum shown).")
    upper: float | None = Field(description="Exclusive upper edge; null: open-ended (no maximum shown).")
    count: int | None


class CategoryCount(_Strict):
    value: str
    count: int | None


class ColumnDescription(_Strict):
    name: str
    kind: Literal["numeric", "categorical"]
    missing: int | None = Field(description="Rows with no value, rounded; null when under the threshold.")
    missing_rate: float | None = None
    histogram: list[HistogramBin] | None = Field(
        default=None, description="Every bin holds at least the policy's minimum count; null if too few."
    )
    categories: list[CategoryCount] | None = None
    other: int | None = Field(
        default=None,
        description="Rows in categories too small to show (their names are never shown), and in those "
        "past `max_categories`.",
    )
    categories_cut: bool = Field(
        default=False,
        description="More categories were large enough to show than the policy's `max_categories`: the "
        "largest are shown (by noisy count in mode dp), the rest are counted in `other`.",
    )


class DescribeResult(_Strict):
    """Disclosure-checked aggregates of a spec's admitted rows, before any training."""

    dataset: str
    dataset_version: int | None = Field(default=None, description="The dataset version it was computed on.")
    label: str
    rows: int | None
    classes: list[ClassCount] | None = None
    columns: list[ColumnDescription]
    privacy: PrivacyReport | None = Field(default=None, description="Present in mode dp.")
    policy: PolicyInEffect | None = Field(
        default=None, description="The rules this answer was released under."
    )
    count_half_width: float | None = Field(
        default=None, description="Mode dp: the 95% half-width of every count's noise (each count +/- it)."
    )


class CostRequest(_Strict):
    """A job to price before it is submitted: no model is needed, the cost depends on what is released."""

    spec: DatasetSpec
    kind: JobKind = "train"
    release: ReleaseOptions = Field(default_factory=ReleaseOptions)


class CostEstimate(_Strict):
    """What a job would cost before it runs, and how wide its intervals are expected to be."""

    dataset: str
    kind: JobKind
    privacy: PrivacyMode
    rho: float = 0.0
    epsilon: float = 0.0
    delta: float = 0.0
    rho_eval: float = Field(default=0.0, description="The evaluation's part of rho (its releases).")
    rho_train: float = Field(
        default=0.0, description="The DP trainer's part of rho (a train job in mode dp), else 0."
    )
    epsilon_train: float = Field(default=0.0, description="rho_train as (epsilon, delta)-DP.")
    training: DPTraining | None = Field(
        default=None,
        description="The noise the DP trainer would add per leaf for the model priced, at rho_train; filled "
        "by the client from the model's parameters (the server's estimate reads no model).",
    )
    rho_spent: float = 0.0
    rho_cap: float = 0.0
    rho_remaining_after: float = 0.0
    over_cap: bool = Field(default=False, description="True when the job would pass the budget's cap.")
    assumed_eval_rows: int | None = Field(
        default=None, description="The evaluation rows the expectation assumes (from the rounded table size)."
    )
    expected: dict[str, float] = Field(
        default_factory=dict, description="Expected half-width of each metric's 95% interval."
    )
    notes: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(
        default_factory=list,
        description="What the job would likely do badly (leaves mostly noise, a long run), from public "
        "numbers; filled by the client from the model, like `training`.",
    )


class BudgetCharge(_Strict):
    """One charge to a privacy budget: a job (whatever became of it), a describe request, or one batch or
    the sketch of a federated training (`sums`)."""

    job_id: str | None = Field(default=None, description="The job charged; null for a describe request.")
    kind: Literal["train", "evaluate", "describe", "sums"]
    rho: float
    at: str = Field(description="When it was charged (UTC, whole seconds).")


class DatasetBudget(_Strict):
    """A user's privacy budget on one dataset in mode dp: the cap, what is spent and on what."""

    dataset: str
    rho_cap: float
    rho_spent: float
    rho_remaining: float
    raised: bool = Field(default=False, description="True when the data owner set this user's cap.")
    charges: list[BudgetCharge] = Field(default_factory=list)


class BudgetReport(_Strict):
    """`GET /v1/budget`: the caller's budgets on the mode-dp datasets they may use."""

    user: str
    datasets: list[DatasetBudget]


ModelReleaseState = Literal["not_allowed", "refused", "awaiting_approval", "approved", "dp_model"]


class ModelReleaseStatus(_Strict):
    job_id: str
    state: ModelReleaseState
    message: str


class MockData(_Strict):
    """A dataset's mock rows: its schema with values that are not real (a file the data owner provides, or
    values synthesised from the column types alone). For dry runs: they catch mistakes, not insight."""

    dataset: str
    source: Literal["file", "synthetic"]
    columns: list[ColumnInfo] = Field(description="The usable columns (features and labels), in order.")
    rows: list[list[str | int | float | bool | None]]


def unknown_column_message(name: str, allowed: Collection[str], where: str = "filter") -> str:
    """Name the unknown column and the nearest valid ones; here so the dry run and the server say it alike."""
    near = difflib.get_close_matches(name, list(allowed), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    return f"unknown column {name!r} in {where}{hint}"


def near_column(name: str, allowed: Collection[str]) -> str:
    """` (did you mean 'x'?)` for a column name near `name`, else "": for the owner's config mistakes."""
    near = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.5)
    return f" (did you mean {near[0]!r}?)" if near else ""


def first_error(errors: Sequence[Mapping], default: str, skip: Collection[str] = ()) -> str:
    """`field.path: message` of pydantic's first error: where and what, never the value that was sent."""
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in skip) or default
    return f"{where}: {first.get('msg', 'invalid')}"


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """`; did you mean 'x'?` for a misspelt key, else the known keys: a typo is fixed without the docs."""
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(known)}"


# The magics' flags for the spec fields a user sets with them, so an error is said in the words typed.
SPEC_FLAGS = {
    ("eval", "fraction"): "--eval-fraction",
    ("eval", "seed"): "--seed",
    ("eval", "where"): "--eval-where",
    ("dataset",): "--dataset",
    ("label",): "--label",
    ("where",): "--where",
}


def spec_error(errors: Sequence[Mapping], flags: bool = False) -> str:
    """A spec's first validation error in a user's words: an unknown key is named with the nearest known
    one (`lable`: did you mean `label`?), a bound is said in flag terms when the magic's flags set it."""
    unknown = [e for e in errors if e.get("type") == "extra_forbidden" and len(e.get("loc", ())) == 1]
    first = (unknown or list(errors) or [{}])[0]  # a misspelt key explains the "missing" one it stands for
    loc = tuple(str(p) for p in first.get("loc", ()) if p not in ("EvalFraction", "EvalWhere"))
    if unknown:
        return f"unknown spec key {loc[0]!r}{did_you_mean(loc[0], list(DatasetSpec.model_fields))}"
    name = SPEC_FLAGS.get(loc) if flags else None
    where = name or ".".join(loc) or "spec"
    message = str(first.get("msg", "invalid"))
    if loc == ("eval", "fraction"):
        message = "must be between 0 and 1 (exclusive)"
    return f"{where} {message}" if name or loc == ("eval", "fraction") else f"spec field {where}: {message}"


# federated training: one batch of trees' noisy leaf sums from one data owner's server


class FederatedColumn(_Strict):
    """A feature column as the DP trainer knows it: public split candidates only."""

    name: str = Field(pattern=IDENT)
    kind: Literal["numeric", "boolean", "categorical"]
    candidates: list[float] = Field(default_factory=list, max_length=254)
    levels: list[str] = Field(default_factory=list, max_length=254)


class FederatedSettings(_Strict):
    """The DP trainer's settings a federated training shares with every server (random splits, no
    released intercept: one round trip per batch)."""

    objective: Literal["binary:logistic", "multi:softprob", "reg:squarederror"] = "binary:logistic"
    num_class: int = Field(default=1, ge=1, le=1000)
    rounds: int = Field(ge=1, le=100_000)
    max_depth: int = Field(ge=1, le=12)
    learning_rate: float = Field(gt=0, le=1)
    reg_lambda: float = Field(ge=0, le=1e9)
    batch_size: int = Field(ge=1, le=100_000)
    grad_share: float = Field(gt=0, lt=1)
    max_leaf: float = Field(gt=0)
    seed: int = Field(default=0, ge=0)
    base_margin: list[Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]] | None = Field(
        default=None, min_length=1, max_length=1000
    )


TRAINING_ID = r"^[A-Za-z0-9_-]{22,64}$"  # a federated training's id: the client's secrets.token_urlsafe(24)


class FederatedSketchUse(_Strict):
    """The candidates a training takes from its DP sketch: the public ranges whose fine grids every
    server counted (`dpboost.candidates.range_grids`) and the servers' released counts added up (one
    vector: per range, its grid's bins then a missing bin). Each server checks that the numeric columns'
    candidates are those counts' quantiles: public, a function of DP releases only."""

    ranges: dict[str, tuple[float, float]] = Field(min_length=1, max_length=1000)
    counts: list[float] = Field(max_length=1000 * 300)


class FederatedSketchRequest(_Strict):
    """`POST /v1/federated/sketch`: before a training's first batch, this server's DP sketch of its
    training rows over the fine grids of the public `ranges` (the owners' declared ranges intersected),
    charged `SKETCH_SHARE` of the training's rho to its own ledger; the candidates come from every
    server's sketch added up."""

    spec: DatasetSpec
    features: list[FederatedColumn] = Field(min_length=1, max_length=1000)
    settings: FederatedSettings
    ranges: dict[str, tuple[float, float]] = Field(min_length=1, max_length=1000)
    rho: float = Field(gt=0, description="The whole training's zCDP budget on this server.")
    prior: bool = Field(
        default=False,
        description="Also release, in the same Gaussian release at the same rho, the rows' clipped "
        "gradients at the public start summed over coarse public bins of each column "
        "(`dpboost.prior`): the coordinator's column prior for the random structure.",
    )
    training: str = Field(
        pattern=TRAINING_ID,
        description="The training's id: each training pays for its own sketch; the same request again is "
        "answered with the same draws at no cost.",
    )


class FederatedSketch(_Strict):
    """One server's noisy sketch counts (`FederatedSketchUse.counts`' layout), with `prior` followed by
    its noisy prior sums (`dpboost.prior.PriorRequest`'s layout), and what they cost."""

    dataset: str
    counts: list[float]
    sigma: float
    privacy: PrivacyReport


class FederatedStepRequest(_Strict):
    """`POST /v1/federated/sums`: one batch of trees, drawn by the analyst's coordinator from public
    candidates, and the model so far (XGBoost JSON, itself a DP release); the server answers its own
    noisy per-leaf sums of its training rows and charges its own ledger for this batch only."""

    spec: DatasetSpec
    features: list[FederatedColumn] = Field(min_length=1, max_length=1000)
    settings: FederatedSettings
    batch: dict = Field(description="The batch's structure (dpboost `Batch.to_dict`).")
    model: str | None = Field(
        default=None,
        description="The model so far as XGBoost JSON (its margins start the batch): at a training's first "
        "step, and at a step the server answered `federated_session_gone`.",
    )
    leaves: list[float] | None = Field(
        default=None,
        description="In place of the model, at a later step: the previous batch's leaf values (its trees "
        "x leaves, flattened), which the training's session on the server adds to its margins.",
    )
    trees: int | None = Field(default=None, ge=0, description="With `leaves`: the trees of the model so far.")
    rho: float = Field(gt=0, description="The whole training's zCDP budget on this server.")
    sketch: FederatedSketchUse | None = Field(
        default=None,
        description="The training's DP sketch, when its numeric candidates come from it: `SKETCH_SHARE` of "
        "`rho` paid for it (`POST /v1/federated/sketch`), the rest pays for the leaves.",
    )
    training: str | None = Field(
        default=None,
        pattern=TRAINING_ID,
        description="The training's id, unguessable and the same for each of its steps: the server keeps "
        "the training's staged rows and margins for your next step (docs/federated.md, Sessions).",
    )


class FederatedEvaluateRequest(_Strict):
    """`POST /v1/federated/evaluate`: a training's end on one server. Its session's evaluation rows (the
    split its steps left out, staged at its first step) are scored with the final model, the session's
    margins moved by the last batch's leaves; the answer is released and charged as an evaluate job's,
    and the session ends."""

    spec: DatasetSpec
    features: list[FederatedColumn] = Field(min_length=1, max_length=1000)
    settings: FederatedSettings
    leaves: list[float] = Field(description="The last batch's leaf values (its trees x leaves, flattened).")
    trees: int = Field(ge=1, description="The trees of the final model.")
    rho: float = Field(gt=0, description="The whole training's zCDP budget on this server.")
    sketch: FederatedSketchUse | None = Field(
        default=None,
        description="The training's DP sketch, when its numeric candidates come from it: `SKETCH_SHARE` of "
        "`rho` paid for it (`POST /v1/federated/sketch`), the rest pays for the leaves.",
    )
    training: str = Field(pattern=TRAINING_ID, description="The training's id, as its steps sent it.")


class FederatedSums(_Strict):
    """One server's noisy per-leaf sums of one batch (trees x leaves, flattened), and what they cost."""

    dataset: str
    gradients: list[float]
    hessians: list[float]
    sigma_gradient: float
    sigma_hessian: float
    privacy: PrivacyReport
    staged: bool = Field(
        default=True,
        description="Whether this step staged the rows (a first step, or its session was gone) or took "
        "the training's session.",
    )
