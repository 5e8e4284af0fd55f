"""The one contract between the trusted parent and a worker: the task it receives, the messages it sends.

Strict pydantic models, validated on receipt by the parent (a worker's message is as untrusted as the
payload it decoded): a message that does not validate ends the job with `invalid_worker_report`. Messages
travel as JSON over a pipe, never as pickle (a DP training's noise requests as noise frames: a JSON header,
then their values as raw float64, which the parent checks as it would a JSON list). The conversation of a
train, evaluate or describe task:

    worker -> isolation          what confinement was applied
    worker -> progress*          stage, round k/n, latest metric
    worker -> admission          the admitted rows: counts per split and class, row-set files
    parent -> decision           proceed, or stop (the release desk refused the admitted rows)
    worker -> progress*
    (worker -> noise, parent -> noise_answer)*   a DP training's noise, drawn and counted by the parent
    worker -> report | failure   raw aggregates, or a fixed code

A federated step (a `sums` task) speaks the same way up to admission, with one `sums` report carrying its
exact sums as noise requests that the parent draws itself (a training's sketch: one `sketch` report); a
later step of a training, on its session's rows, sends a one-way `resumed` instead of an admission
(charged as the session's first step was).
A review task (the data owner's look at a payload with notebook code) answers with one `review` report;
a plan task (the first half of a cluster job) with one `plan`: the payload's canonical plan. The job
driver of a cluster job gets a `DriverTask` and then speaks like a worker, from `progress` on.
`PROTOCOL_VERSION` changes when a message changes shape.

Why it is long: it is the whole contract of one process boundary, every message of every task kind, and
it is meant to be read (and versioned) as one document.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from remote_magic.contract.codes import CODES
from remote_magic.contract.wire import DatasetSpec, ModelBounds, ReleaseOptions, Stage
from remote_magic.families.base import Plan

PROTOCOL_VERSION = 14
MAX_MESSAGE_BYTES = 16 * 2**20
PARTITION_TABLE = "__remote_magic_partition"  # a cluster partition's rows, with their file_row_number
SCRATCH_DIR = "scratch"  # in a job folder: spilled rows and external-memory pages, removed after the job

TaskKind = Literal["train", "evaluate", "describe", "review", "plan", "sums"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# the task
class Staging(_Strict):
    """The server-built staging plan: where the rows are, the query that admits them (built by trusted
    code from the checked spec, `?` placeholders; the dataset's path is the last parameter; the rows the
    filter admits with a missing label come marked in `MISSING_FLAG`, for the worker to count and drop),
    the model's input columns in order (dataset features, then derived ones) and the label."""

    dataset_path: str
    query: str
    params: list[int]
    columns: list[str]
    label: str
    partition_query: str = Field(
        default="", description="The same query over one partition, registered as PARTITION_TABLE."
    )
    partition_missing_label_query: str = Field(
        default="", description="The same count over one partition, registered as PARTITION_TABLE."
    )
    label_levels: list[str] | None = Field(
        default=None,
        description="The owner's declared classes of the label: a classifier's classes, whatever rows come.",
    )
    label_dtype: str = Field(
        default="", description="The label's type in the schema (public): what a refusal may hint from."
    )
    table_rows: int | None = Field(
        default=None, ge=0, description="Rows in the whole file, from its footer (read once by the parent)."
    )


class Limits(_Strict):
    threads: int = Field(ge=1)
    cpu_seconds: int = Field(ge=1)
    memory_mb: int = Field(ge=64)
    staging_mb: int = Field(default=0, ge=0, description="Feature data held in memory; past it, spill.")
    file_mb: int = Field(default=1024, ge=1, description="The largest file the worker may write.")
    gpu: bool = Field(default=False, description="The policy allows CUDA and this machine has a GPU.")
    max_payload_bytes: int = Field(ge=0)
    sandbox_uid: int = 65534
    sandbox_gid: int = 65534


class DescribeOptions(_Strict):
    """What a describe's worker shows. `private` (the noisy modes): histogram edges and categories from
    the owner's declarations (`ranges`, `levels`), else from one noisy sketch of cost `sketch_rho`
    (levels selected at `delta`), never from exact values."""

    max_categories: int = Field(ge=1)
    private: bool = False
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
    levels: dict[str, list[str]] = Field(default_factory=dict)
    sketch_rho: float = Field(default=0.0, ge=0)
    delta: float = Field(default=0.0, ge=0, lt=1)


class SavedModel(_Strict):
    """A registered version the parent copied into the job folder: the family's saved form, never pickle
    (the worker finds its family from the bytes, `families.family_of_saved`)."""

    file: str = Field(pattern=r"^[a-z_]+\.json$")


class PrivateTraining(_Strict):
    """The parent's order for a DP training (mode dp): its budget, all of it spent through `noise`
    requests the parent answers and counts; the data owner's public column ranges and text levels (the
    split candidates); the delta a data-chosen text level may add."""

    rho: float = Field(gt=0)
    column_ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
    column_levels: dict[str, list[str]] = Field(default_factory=dict)
    delta: float = Field(gt=0, lt=1)


class FederatedOrder(_Strict):
    """A federated training's step on this server (a `sums` task): the batch's public structure and
    settings, the model so far (a JSON file the parent wrote in the job folder), the whole training's rho
    and this batch's share of it, which the parent charged and the worker's noise requests spend. Or
    (`evaluate`) its final evaluation: the last batch's leaves on the session's evaluation rows; or
    (`sketch`) the training's sketch before its first batch. `rho` is what the leaves spend: the
    training's, less its sketch's share when it has one."""

    features: list[dict]
    settings: dict
    batch: dict | None = Field(default=None, description="None only with `evaluate` or `sketch`.")
    model_file: str = Field(pattern=r"^[a-z_]+\.json$")
    rho: float = Field(gt=0)
    step_rho: float = Field(
        default=0.0, ge=0, description="0 only with `evaluate`; the sketch's rho with `sketch`."
    )
    evaluate: bool = Field(
        default=False,
        description="Score the model the session's margins reach with `leaves` on its evaluation rows "
        "(a TrainReport, released as an evaluate job's), in place of a batch's sums.",
    )
    session: bool = Field(
        default=False, description="The training's session (rows, margins) is in the folder's SESSION_IN."
    )
    keep: bool = Field(default=False, description="Write the session after this step to SESSION_OUT.")
    leaves: list[float] | None = Field(
        default=None, description="No model: the previous batch's leaf values, for the session's margins."
    )
    trees: int | None = Field(default=None, ge=0, description="With `leaves`: the trees of the model so far.")
    again: bool = Field(
        default=False,
        description="With `leaves`: the step that left the session, asked again; its margins are at the "
        "model so far already, so the leaves are not added twice.",
    )
    sketch: dict[str, tuple[float, float]] | None = Field(
        default=None,
        description="The training's sketch in place of a batch: its training rows counted over these "
        "public ranges' fine grids (a SketchReport, noised at `step_rho`).",
    )
    prior: bool = Field(
        default=False,
        description="With `sketch`: the prior sums (`dpboost.prior`) follow the counts in the same release.",
    )


# A federated training's session in a sums task's folder: the one the parent found, and the one after the
# step, which the parent keeps for the training's next step (jobs/sessions.py).
SESSION_IN = "session"
SESSION_OUT = "session-next"


class Task(_Strict):
    protocol: Literal[14] = PROTOCOL_VERSION
    kind: TaskKind
    spec: DatasetSpec | None = None
    staging: Staging | None = None
    bounds: ModelBounds | None = None
    limits: Limits
    model_facts: bool = Field(default=False, description="Report leaf facts for the model-release rules.")
    approved_sha256: str | None = None
    describe: DescribeOptions | None = None
    release: ReleaseOptions = Field(default_factory=ReleaseOptions)
    rare_level_rows: int = Field(
        default=10,
        ge=0,
        description="Text levels with fewer admitted rows merge (0: none, the noisy modes: the merge is "
        "decided by exact counts, so one row would move other rows' values).",
    )
    label_range: tuple[float, float] | None = Field(
        default=None, description="Clip range of a numeric label."
    )
    structure: bool = Field(
        default=True, description="Count what the model sets apart (mode dp's structural rules read it)."
    )
    public_classes: bool = Field(
        default=False,
        description="A classifier's classes must be public before any row is read (the owner's declared "
        "ones or the spec's): a train or evaluate job in the noisy modes.",
    )
    base_model: SavedModel | None = Field(default=None, description="Continue or evaluate this model.")
    dp_training: PrivateTraining | None = Field(
        default=None, description="Train with the DP trainer under this order (a train job in mode dp)."
    )
    federated: FederatedOrder | None = Field(
        default=None, description="One batch's noisy leaf sums for a federated training (a sums task)."
    )


class Assignment(_Strict):
    """Parent -> a warm worker, its first and only message before the conversation: its one job's folder
    (the task is in it, as for a fresh worker)."""

    type: Literal["assignment"] = "assignment"
    folder: str


# worker -> parent
class Isolation(_Strict):
    type: Literal["isolation"] = "isolation"
    applied: dict[str, str]
    seconds: float = Field(default=0.0, ge=0, description="How long confinement took (the job's timeline).")


class ProgressNote(_Strict):
    type: Literal["progress"] = "progress"
    stage: Stage
    round: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)
    metric: dict[str, dict[str, float]] | None = None


class SplitCounts(_Strict):
    rows: int = Field(ge=0)
    classes: dict[str, int] | None = None


class Admission(_Strict):
    """The admitted rows before anything that depends on their values: counts and row-set files."""

    type: Literal["admission"] = "admission"
    counts: dict[Literal["train", "eval"], SplitCounts]
    row_sets: dict[Literal["training", "evaluation", "admitted"], str]
    table_rows: int = Field(ge=0)
    missing_label: int | None = Field(
        default=None, ge=0, description="Rows the filter admitted whose label is missing (not counted: null)."
    )


class Resumed(_Strict):
    """A federated step's worker took its rows from the training's session (a later step): the rows its
    first step staged and the parent admitted then. The parent charges this step as that admission, its
    own record of it (no row sets to read or record again); it sends no reply, so the worker goes on to
    its sums at once."""

    type: Literal["resumed"] = "resumed"


class TrainingPlan(_Strict):
    """A DP training's public plan, before its first noise request: the trainer's settings (its
    `Settings` fields), the columns its sketch counts and the sketch's rho, and whether it continues a
    base model. The parent checks it against what it knows (the owner's label range, the admitted
    classes, the job's features and training budget) and then each noise request against the releases
    these settings make (families/dpboost/schedule.py), in order."""

    type: Literal["training_plan"] = "training_plan"
    settings: dict[str, str | int | float | bool | list[float] | None]
    sketched: list[str] = Field(default_factory=list)
    sketch_rho: float = Field(default=0.0, ge=0)
    continuing: bool = False


MAX_BATCHED_NOISE = 16
_FLOATS: TypeAdapter[list[float]] = TypeAdapter(list[float])


def _finite_values(value: object) -> np.ndarray:
    """A noise request's values as float64, at least one and every one finite: a JSON list of numbers,
    or a noise frame's array (`read_noise_frame`)."""
    array = np.asarray(value if isinstance(value, np.ndarray) else _FLOATS.validate_python(value), np.float64)
    if array.ndim != 1 or len(array) == 0 or not np.isfinite(array).all():
        raise ValueError("noise values must be one or more finite numbers")
    return array


# In memory a float64 array (what OpenDP reads without a copy); in JSON a list of numbers.
NoiseValues = Annotated[
    np.ndarray,
    PlainValidator(_finite_values),
    PlainSerializer(lambda array: array.tolist(), return_type=list[float]),
    WithJsonSchema({"type": "array", "items": {"type": "number"}, "minItems": 1}),
]


class NoiseRequest(_Strict):
    """A DP training's question: noise `values` (entries one row moves by at most `bound` in L2 norm,
    `gaussian`) or pick the index of about the highest (each moved by at most `bound`, `top1`), at a cost
    of `rho`. The parent answers only while the job's training budget lasts. A worker sends it (alone or
    in a `NoiseBatch`) as a noise frame (`noise_frame`), not as JSON."""

    type: Literal["noise"] = "noise"
    kind: Literal["gaussian", "top1"]
    values: NoiseValues
    bound: float = Field(gt=0)
    rho: float = Field(gt=0)


class NoiseBatch(_Strict):
    """Noise requests whose values the worker holds all at once (a batch's gradient and hessian sums),
    in one message: the parent checks and charges each exactly as if it came alone, in this order, and
    answers them together (`NoiseAnswers`); one round trip instead of one per request."""

    type: Literal["noise_batch"] = "noise_batch"
    requests: list[NoiseRequest] = Field(min_length=1, max_length=MAX_BATCHED_NOISE)


# A noise frame: a DP training's requests as bytes, not JSON (a training asks ~100 a small job, each a
# round trip the worker waits on, most a top-1 over ~1,000 split scores: as JSON, 75 us to write and 50 us
# to read each; as a frame, 3 and 3). NOISE_FRAME, the header's length (4 bytes, little-endian), the
# header (`NoiseFrame`, JSON), then every request's values in order as little-endian float64.
NOISE_FRAME = b"\x00"  # a JSON message starts with "{"
_HEADER_LENGTH = 4


class NoiseShape(_Strict):
    """One request of a noise frame, less its values: how many there are."""

    kind: Literal["gaussian", "top1"]
    size: int = Field(ge=1)
    bound: float = Field(gt=0)
    rho: float = Field(gt=0)


class NoiseFrame(_Strict):
    """A noise frame's header: one request (`batch` false, read as a `NoiseRequest`) or a batch."""

    type: Literal["noise_frame"] = "noise_frame"
    batch: bool
    requests: list[NoiseShape] = Field(min_length=1, max_length=MAX_BATCHED_NOISE)

    @model_validator(mode="after")
    def _one_unless_batch(self) -> NoiseFrame:
        if not self.batch and len(self.requests) != 1:
            raise ValueError("a frame that is not a batch holds one request")
        return self


def noise_frame(requests: list[tuple[str, np.ndarray | list[float], float, float]], batch: bool) -> bytes:
    """`(kind, values, bound, rho)` requests as one noise frame (the worker's side)."""
    arrays = [np.ascontiguousarray(values, dtype="<f8") for _, values, _, _ in requests]
    shapes = [
        NoiseShape(kind=kind, size=len(array), bound=bound, rho=rho)  # type: ignore[arg-type]
        for (kind, _, bound, rho), array in zip(requests, arrays)
    ]
    header = NoiseFrame(batch=batch, requests=shapes).model_dump_json().encode()
    length = len(header).to_bytes(_HEADER_LENGTH, "little")
    return b"".join([NOISE_FRAME, length, header, *(array.tobytes() for array in arrays)])


def read_noise_frame(data: bytes) -> NoiseRequest | NoiseBatch:
    """A noise frame as the requests it carries, each validated as a JSON one is (the parent's side).
    Raises ValueError (pydantic's ValidationError is one) when it is not a well-formed frame: a header
    that does not validate, values of another length than the header says, a value that is not finite."""
    start = len(NOISE_FRAME) + _HEADER_LENGTH
    end = start + int.from_bytes(data[len(NOISE_FRAME) : start], "little")
    if len(data) < end:
        raise ValueError("a noise frame shorter than its header")
    header = NoiseFrame.model_validate_json(data[start:end])
    sizes = [shape.size for shape in header.requests]
    if len(data) - end != 8 * sum(sizes):
        raise ValueError("a noise frame whose values are not the length its header says")
    # One copy, writable (OpenDP reads no read-only array); a slice and a bytearray were two (the values
    # may be as large as the worker's memory: a sketch of every distinct text level).
    values = np.frombuffer(memoryview(data)[end:], dtype="<f8").copy()
    bounds = np.cumsum([0, *sizes])
    requests = [
        NoiseRequest(kind=shape.kind, values=values[a:b], bound=shape.bound, rho=shape.rho)
        for shape, a, b in zip(header.requests, bounds[:-1], bounds[1:])
    ]
    return NoiseBatch(requests=requests) if header.batch else requests[0]


class Confusion(_Strict):
    labels: list[str]
    counts: list[list[int]]


class CurveReport(_Strict):
    metric: str
    train: list[float]
    eval: list[float]


class RoundsReport(_Strict):
    base: int = Field(ge=0)
    new: int = Field(ge=0)
    total: int = Field(ge=0)


class ModelFacts(_Strict):
    """What the model-release rules read of a trained model: the fewest training rows in a leaf of the
    trees trained here, and what its family's own rule reads (privacy/model_release.py)."""

    family: str
    min_leaf_rows: int | None
    facts: dict[str, float | int | bool | None]


class EvalStats(_Strict):
    """Clipped sums over the evaluation rows, and how far one row can move each: what a DP release is
    drawn from. Exact, for the release desk only."""

    n: int = Field(ge=0)
    correct: int | None = None
    loss_sum: float | None = None
    loss_clip: float | None = None
    auc: float | None = None
    confusion: list[list[int]] | None = None
    sse: float | None = None
    sae: float | None = None
    sum_y: float | None = None
    sum_y2: float | None = None
    residual_clip: float | None = None
    label_half_range: float | None = None


class CurveStats(_Strict):
    """Clipped loss sums on the evaluation rows at K checkpoint rounds (opt-in, mode dp)."""

    rounds: list[int]
    loss_sums: list[float]
    loss_clip: float
    metric: Literal["log_loss", "rmse"]


class Structure(_Strict):
    """How many rows a model sets apart: the structural rules of mode dp read these."""

    base_smallest_leaf: int | None = Field(
        default=None, description="Admitted rows in the base model's emptiest leaf."
    )
    base_isolated: int | None = Field(
        default=None, description="Rows the base model's predictions set apart."
    )
    trained_smallest_leaf: int | None = Field(
        default=None, description="Training rows in the emptiest new leaf."
    )
    trained_isolated: int | None = None


class TrainingFacts(_Strict):
    """What a DP training says it spent and the noise scales of its leaves (the parent counts the
    spending itself; these are checked against it)."""

    rho: float = Field(ge=0)
    trees: int = Field(ge=0)
    sigma_gradient: float = Field(gt=0)
    sigma_hessian: float = Field(gt=0)


class TrainReport(_Strict):
    """Raw aggregates of a train or evaluate job: exact numbers, for the release desk only."""

    type: Literal["report"] = "report"
    task: Literal["binary", "multiclass", "regression"]
    metrics: dict[str, float | None]
    confusion: Confusion | None = None
    history: CurveReport | None = None
    feature_importance: dict[str, float]
    rounds: RoundsReport
    model: ModelFacts | None = None
    stats: EvalStats
    curve: CurveStats | None = None
    importance_scores: dict[str, float] | None = Field(
        default=None, description="Permutation importance: clipped loss increase per feature (opt-in)."
    )
    importance_clip: float | None = None
    structure: Structure = Field(default_factory=Structure)
    training: TrainingFacts | None = None


class Histogram(_Strict):
    edges: list[float]
    counts: list[int]
    # The values were clipped into [edges[0], edges[-1]] (a declared range, as jobs clip): the two open
    # outer counts are 0 whatever the rows, so the release drops their noise and closes the ends.
    closed: bool = False


class ColumnReport(_Strict):
    name: str
    kind: Literal["numeric", "categorical"]
    missing: int = Field(ge=0)
    values: int = Field(ge=0, description="Rows with a value.")
    histogram: Histogram | None = None
    categories: dict[str, int] | None = None
    rest: int = 0


class DescribeReport(_Strict):
    type: Literal["describe"] = "describe"
    rows: int = Field(ge=0)
    classes: dict[str, int] | None = None
    columns: list[ColumnReport]


class SumsReport(_Strict):
    """A sums task's end: its exact leaf sums as noise requests (`noise`: gradients, then hessians), which
    the parent checks and counts as a DP training's, draws and releases itself; they come with the report
    (the worker needs no answer, so it waits for none) and the worker never sees the draws."""

    type: Literal["sums"] = "sums"
    trees: int = Field(ge=1)
    leaves: int = Field(ge=2)
    noise: NoiseBatch
    staged: bool = Field(default=True, description="Staged its rows, not taken from a session.")


class SketchReport(_Strict):
    """A federated training's sketch (a `sums` task with `FederatedOrder.sketch`): its training rows'
    exact counts over the public grids as one noise request, which the parent draws and releases."""

    type: Literal["sketch"] = "sketch"
    noise: NoiseBatch


class ReviewReport(_Strict):
    type: Literal["review"] = "review"
    text: str


class Failure(_Strict):
    type: Literal["error"] = "error"
    code: str
    message: str = Field(max_length=500)

    @field_validator("code")
    @classmethod
    def _registered(cls, code: str) -> str:
        if code not in CODES:
            raise ValueError("not a registered error code")
        return code


class CanonicalPlan(_Strict):
    """A decoded model in canonical form, as data: what a cluster may receive instead of the payload.

    `base` names the file in the job folder that holds the base booster as XGBoost JSON (the parent
    checks it is JSON before anything reads it)."""

    family: str
    params: dict[str, str | int | float | bool | None]
    rounds: int = Field(ge=0)
    task: str
    base: str | None = None
    base_rounds: int = Field(default=0, ge=0)
    preprocess: dict | None = None
    stops_early: bool = False

    @classmethod
    def of(cls, plan: Plan, base: str | None) -> CanonicalPlan:
        """A family's plan as data, its base model in the file `base` (notebook functions never cross)."""
        return cls(base=base, **{name: getattr(plan, name) for name in cls.model_fields if name != "base"})

    def plan(self, base: bytes | None) -> Plan:
        """The family's plan again, with the base model's bytes."""
        return Plan(base=base, **self.model_dump(exclude={"base"}))


class PlanReady(_Strict):
    """A `plan` task's answer: the canonical plan of the payload it decoded, checked against the bounds."""

    type: Literal["plan"] = "plan"
    plan: CanonicalPlan


class ClusterConfig(_Strict):
    """How the job driver reaches the cluster (the certificates are files only the server can read)."""

    scheduler: str
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    partitions: int = Field(default=0, ge=0)
    connect_timeout_s: float = Field(gt=0)
    collective_timeout_s: int = Field(ge=1)
    start_timeout_s: float = Field(gt=0)


class DriverTask(_Strict):
    """What the job driver of a cluster job gets: the job's task, its canonical plan, the cluster."""

    task: Task
    plan: CanonicalPlan
    cluster: ClusterConfig


WorkerMessage = Annotated[
    Isolation
    | ProgressNote
    | Admission
    | Resumed
    | TrainingPlan
    | NoiseRequest
    | NoiseBatch
    | TrainReport
    | DescribeReport
    | ReviewReport
    | SumsReport
    | SketchReport
    | PlanReady
    | Failure,
    Field(discriminator="type"),
]
Report = TrainReport | DescribeReport | ReviewReport | SumsReport | SketchReport
WORKER_MESSAGE: TypeAdapter[WorkerMessage] = TypeAdapter(WorkerMessage)


# parent -> worker
class Decision(_Strict):
    type: Literal["decision"] = "decision"
    proceed: bool
    train_rows: int | None = Field(
        default=None,
        description="In the noisy modes, the training rows' noisy count drawn at admission (a DP release the "
        "result carries): what a DP training sizes its work by, never the exact count.",
    )


class NoiseAnswer(_Strict):
    """The answer to a `NoiseRequest`: the noisy values (`gaussian`) or the chosen index (`top1`)."""

    type: Literal["noise_answer"] = "noise_answer"
    values: list[float] = Field(default_factory=list)
    index: int | None = None


class NoiseAnswers(_Strict):
    """The answers to a `NoiseBatch`, in its order."""

    type: Literal["noise_answers"] = "noise_answers"
    answers: list[NoiseAnswer]


ParentMessage = Decision | NoiseAnswer | NoiseAnswers


def read_message(data: bytes) -> WorkerMessage:
    """Validate one message from a worker (JSON, or a noise frame); raises ValueError (pydantic's
    ValidationError is one) when it is not one."""
    if data[: len(NOISE_FRAME)] == NOISE_FRAME:
        return read_noise_frame(data)
    return WORKER_MESSAGE.validate_json(data)
