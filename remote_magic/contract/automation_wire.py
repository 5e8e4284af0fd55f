"""The wire schema of the automation: registered model versions and their lineage, recipes, webhooks.

Defined once, here, beside `wire.py`, and imported by the server; every response model forbids extra
fields, so what leaves the server is exactly what is declared.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .wire import IDENT, DatasetSpec, DPTraining, JobKind, MetricPoint

ModelOrigin = Literal["fresh", "uploaded", "version"]
WebhookEvent = Literal[
    "job.succeeded", "job.failed", "model.registered", "alias.moved", "dataset.version", "recipe.paused"
]
EVENTS: tuple[str, ...] = WebhookEvent.__args__  # type: ignore[attr-defined]
REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,63})@([A-Za-z0-9_]{1,64})$")
# Metrics where smaller is better; the rest (auc, accuracy, f1, r2) improve upwards.
LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss", "mlogloss", "logloss", "error"})
Scalar = str | int | float | bool | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_ref(ref: str) -> str:
    """A model reference `name@3`, `name@latest` or `name@ALIAS`; raise ValueError otherwise."""
    if not REF.match(ref):
        raise ValueError("a model reference is NAME@VERSION, NAME@latest or NAME@ALIAS, e.g. churn@3")
    return ref


class Condition(_Strict):
    """Register (and move the alias) only when the run's released eval metric beats the incumbent's."""

    metric: str = Field(pattern=IDENT, description="A released eval metric, e.g. auc or rmse.")
    min_improvement: float = Field(default=0.0, ge=0, le=1e6)


class RegisterRequest(_Strict):
    name: str = Field(pattern=IDENT, description="The model name; its versions are numbered 1, 2, ...")
    alias: str | None = Field(default=None, pattern=IDENT, description="Point this alias at the new version.")
    when: Condition | None = Field(
        default=None,
        description="Compare with the alias's version (or the latest one): register only if it improves.",
    )

    @field_validator("alias")
    @classmethod
    def _not_a_keyword(cls, value: str | None) -> str | None:
        if value is not None and (value == "latest" or value.isdigit()):
            raise ValueError("an alias may not be 'latest' or a number")
        return value


class Lineage(_Strict):
    """Where a version came from: its parent, the data, the spec and parameters, the job and its user."""

    origin: ModelOrigin = Field(description="fresh, an uploaded base model, or a registered version.")
    parent: str | None = Field(default=None, description="The parent version, e.g. churn@2.")
    base_sha256: str | None = Field(default=None, description="The uploaded payload's hash.")
    dataset: str
    dataset_version: str | None = None
    spec: DatasetSpec
    params: dict[str, Scalar] = Field(default_factory=dict)
    job_id: str
    user: str


class ModelVersion(_Strict):
    name: str
    number: int
    ref: str
    created: str
    aliases: list[str] = Field(default_factory=list)
    main_metric: MetricPoint | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="Released eval metrics.")
    rounds: int = 0
    lineage: Lineage
    training: DPTraining | None = Field(
        default=None,
        description="Present when the DP trainer trained this version: a DP release, downloadable at once.",
    )
    label: str | None = Field(default=None, description="The label the version was trained on.")
    classes: list[str] | None = Field(
        default=None,
        description="A classifier's classes in the order of the model's codes 0, 1, ..., as its job's "
        "result released them; null for a regressor.",
    )


class ModelInfo(_Strict):
    name: str
    owner: str
    aliases: dict[str, int] = Field(default_factory=dict)
    versions: list[ModelVersion]


class ModelList(_Strict):
    models: list[ModelInfo]


class LineageChain(_Strict):
    """A version and its ancestors, newest first (ancestors you may not see are left out)."""

    versions: list[ModelVersion]


class AliasMove(_Strict):
    version: int = Field(ge=1)


class Triggers(_Strict):
    on_new_data: bool = Field(default=False, description="Run on each new version of the spec's dataset.")
    on_new_model: str | None = Field(
        default=None, pattern=IDENT, description="Run when this model gets a version or an alias moves."
    )
    every: str | None = Field(default=None, pattern=r"^\d+[smhd]$", description="Run this often, e.g. 1d.")


class RecipeIn(_Strict):
    name: str = Field(pattern=IDENT)
    kind: JobKind = "train"
    spec: DatasetSpec
    base_model: str | None = Field(default=None, description="A registered version to start from.")
    triggers: Triggers
    register_as: RegisterRequest | None = None

    @field_validator("base_model")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        return None if value is None else check_ref(value)


class Recipe(RecipeIn):
    state: Literal["active", "paused"]
    paused_reason: str | None = None
    created: str
    runs: int = Field(description="Jobs this recipe has started.")
    last_job: str | None = None


class RecipeList(_Strict):
    recipes: list[Recipe]


class WebhookIn(_Strict):
    url: str = Field(min_length=8, max_length=2000)
    events: list[WebhookEvent] = Field(min_length=1, max_length=len(EVENTS))


class Webhook(_Strict):
    id: str
    url: str
    events: list[WebhookEvent]
    created: str
    secret: str | None = Field(
        default=None, description="The signing secret: shown once, in the answer to the subscription."
    )


class WebhookList(_Strict):
    webhooks: list[Webhook]


class Delivery(_Strict):
    id: str = Field(description="The delivery id: the same on every attempt, never reused.")
    webhook_id: str
    event: WebhookEvent
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status: int | None = None
    last_error: str | None = None
    created: str
    next_attempt_at: str | None = None
    delivered_at: str | None = None


class DeliveryList(_Strict):
    deliveries: list[Delivery]
