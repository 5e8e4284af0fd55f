"""A read-only GraphQL view (`/v1/graphql`, strawberry) over datasets, jobs, models and their lineage,
recipes and deliveries. REST stays the primary API.

Every answer is built from the same calls the REST routes make, so the visibility is exactly REST's: a
token names the user, jobs, recipes and webhooks are the user's own, datasets those the token grants,
models those the registry lets the user see. Every request needs the token, introspection included.
Queries are refused before they run when they are too deep, too long, use too many aliases or could cost
too much (graphql_cost.py). Errors other than the server's own refusals are masked.

Why it is long: it is the whole schema, each type beside the resolvers of its fields, so that what every
field shows, and to whom, can be checked against REST in one reading.
"""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)
from strawberry.fastapi import GraphQLRouter
from strawberry.types import Info

from remote_magic.contract.automation_wire import ModelVersion as VersionModel
from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import JobStatus

from ..intake.catalog import describe_dataset, granted
from ..intake.status import status_of
from .deps import AutomationDep, DeskDep, RegistryDep, SettingsDep, StoreDep, User, VersionsDep
from .graphql_cost import MAX_LIST, CostLimit, FragmentLimit
from .jobs import own_job

MAX_DEPTH = 8


@strawberry.type
class Metric:
    name: str
    value: float


def _metrics(values: dict[str, float] | None) -> list[Metric]:
    return [Metric(name=k, value=float(v)) for k, v in sorted((values or {}).items())]


@strawberry.type
class Column:
    name: str
    dtype: str
    role: str


@strawberry.type
class Job:
    id: str
    dataset: str
    kind: str
    state: str
    submitted_at: str
    finished_at: str | None
    error_code: str | None
    recipe: str | None
    trigger: str | None
    base_model: str | None
    registered_as: str | None
    model_file: str | None
    metrics: list[Metric]


def _job(status: JobStatus, result: dict | None) -> Job:
    return Job(
        id=status.id,
        dataset=status.dataset,
        kind=status.kind,
        state=status.state,
        submitted_at=status.submitted_at,
        finished_at=status.finished_at,
        error_code=status.error.code if status.error else None,
        recipe=status.recipe,
        trigger=status.trigger,
        base_model=status.base_model,
        registered_as=status.registration.version if status.registration else None,
        model_file=status.model_file,
        metrics=_metrics((result or {}).get("metrics")),
    )


@strawberry.type
class ModelVersion:
    ref: str
    name: str
    number: int
    created: str
    aliases: list[str]
    origin: str
    parent_ref: str | None
    dataset: str
    dataset_version: str | None
    user: str
    job_id: str
    metrics: list[Metric]

    @strawberry.field(description="The parent version, when you may see it.")
    def parent(self, info: Info) -> ModelVersion | None:
        if self.parent_ref is None:
            return None
        try:
            return _version(_ctx(info)["registry"].view(_resolve(info, self.parent_ref)))
        except Refusal:
            return None

    @strawberry.field(description="This version and its ancestors, newest first.")
    def lineage(self, info: Info) -> list[ModelVersion]:
        ctx = _ctx(info)
        return [_version(v) for v in ctx["registry"].lineage(ctx["user"].user, self.ref).versions]

    @strawberry.field(description="The job that trained it, when it is yours.")
    def job(self, info: Info) -> Job | None:
        ctx = _ctx(info)
        try:
            row = own_job(ctx["store"], ctx["user"], self.job_id)
        except Refusal:
            return None
        return _job(status_of(row, ctx["registry"]), row.result)


def _version(view: VersionModel) -> ModelVersion:
    return ModelVersion(
        ref=view.ref,
        name=view.name,
        number=view.number,
        created=view.created,
        aliases=view.aliases,
        origin=view.lineage.origin,
        parent_ref=view.lineage.parent,
        dataset=view.lineage.dataset,
        dataset_version=view.lineage.dataset_version,
        user=view.lineage.user,
        job_id=view.lineage.job_id,
        metrics=_metrics(view.metrics),
    )


@strawberry.type
class Model:
    name: str
    owner: str
    versions: list[ModelVersion]


@strawberry.type
class DatasetVersion:
    number: int
    created: str
    rows: int | None
    schema_hash: str
    columns_added: list[str]
    columns_dropped: list[str]


@strawberry.type
class Dataset:
    name: str
    description: str
    rows: int | None
    version: str | None
    columns: list[Column]
    versions: list[DatasetVersion]

    @strawberry.field(description="Registered versions trained on this dataset that you may see.")
    def models(self, info: Info, since_version: str | None = None, limit: int = 20) -> list[ModelVersion]:
        return _trained_on(info, self.name, since_version)[: _cap(limit)]


@strawberry.type
class Delivery:
    id: str
    event: str
    state: str
    attempts: int
    last_status: int | None
    created: str
    delivered_at: str | None


@strawberry.type
class Webhook:
    id: str
    url: str
    events: list[str]

    @strawberry.field
    def deliveries(self, info: Info, limit: int = 20) -> list[Delivery]:
        outbox = _ctx(info)["automation"].outbox
        return [
            Delivery(
                id=d.id,
                event=d.event,
                state=d.state,
                attempts=d.attempts,
                last_status=d.last_status,
                created=d.created,
                delivered_at=d.delivered_at,
            )
            for d in outbox.deliveries(self.id, _cap(limit))
        ]


@strawberry.type
class Recipe:
    name: str
    kind: str
    dataset: str
    state: str
    paused_reason: str | None
    on_new_data: bool
    on_new_model: str | None
    every: str | None
    base_model: str | None
    runs: int

    @strawberry.field(description="The jobs this recipe started, newest first.")
    def jobs(self, info: Info, limit: int = 20) -> list[Job]:
        return [j for j in _jobs(info, MAX_LIST * 5) if j.recipe == self.name][: _cap(limit)]


def _ctx(info: Info) -> dict[str, Any]:
    return info.context


def _cap(limit: int) -> int:
    return max(0, min(limit, MAX_LIST))


def _resolve(info: Info, ref: str):
    ctx = _ctx(info)
    return ctx["registry"].resolve(ctx["user"].user, ref)


def _jobs(info: Info, limit: int, dataset: str | None = None) -> list[Job]:
    ctx = _ctx(info)
    rows = ctx["store"].list_jobs(ctx["user"].user, limit)
    return [
        _job(status_of(r, ctx["registry"]), r.result) for r in rows if dataset is None or r.dataset == dataset
    ]


def _version_key(version: str | None, first_seen: dict[str, str]) -> tuple:
    """Order dataset versions: numbers as numbers, content identities by when they were first trained on."""
    if version is None:
        return (0, "")
    return (1, f"{int(version):020d}") if version.isdigit() else (1, first_seen.get(version, ""))


def _trained_on(info: Info, dataset: str, since_version: str | None) -> list[ModelVersion]:
    ctx = _ctx(info)
    registry, user = ctx["registry"], ctx["user"].user
    granted(ctx["settings"], ctx["user"].datasets, dataset)
    rows = [r for r in registry.store.by_dataset(dataset) if registry.may_use(user, r.name)]
    first_seen: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r.created):
        first_seen.setdefault(row.dataset_version or "", row.created)
    if since_version is not None:
        floor = _version_key(since_version, first_seen)
        rows = [r for r in rows if _version_key(r.dataset_version, first_seen) >= floor]
    return [_version(registry.view(r)) for r in rows]


@strawberry.type
class Query:
    @strawberry.field
    def whoami(self, info: Info) -> str:
        return _ctx(info)["user"].user

    @strawberry.field(description="The datasets your token grants.")
    def datasets(self, info: Info) -> list[Dataset]:
        ctx = _ctx(info)
        return [_dataset(info, name) for name in ctx["user"].datasets if name in ctx["settings"].datasets]

    @strawberry.field
    def dataset(self, info: Info, name: str) -> Dataset:
        ctx = _ctx(info)
        granted(ctx["settings"], ctx["user"].datasets, name)
        return _dataset(info, name)

    @strawberry.field(description="Your jobs, newest first.")
    def jobs(self, info: Info, limit: int = 20, dataset: str | None = None) -> list[Job]:
        return _jobs(info, _cap(limit), dataset)

    @strawberry.field
    def job(self, info: Info, id: str) -> Job:  # noqa: A002 - the GraphQL argument's name
        ctx = _ctx(info)
        row = own_job(ctx["store"], ctx["user"], id)
        return _job(status_of(row, ctx["registry"]), row.result)

    @strawberry.field(description="Registered models you may see.")
    def models(self, info: Info, name: str | None = None, limit: int = 20) -> list[Model]:
        ctx = _ctx(info)
        listed = ctx["registry"].models(ctx["user"].user, name).models[: _cap(limit)]
        return [Model(name=m.name, owner=m.owner, versions=[_version(v) for v in m.versions]) for m in listed]

    @strawberry.field(description="One version: NAME@N, NAME@latest or NAME@ALIAS.")
    def model_version(self, info: Info, ref: str) -> ModelVersion:
        return _version(_ctx(info)["registry"].view(_resolve(info, ref)))

    @strawberry.field(description="Versions trained on a dataset, from a dataset version on.")
    def trained_on(self, info: Info, dataset: str, since_version: str | None = None) -> list[ModelVersion]:
        return _trained_on(info, dataset, since_version)

    @strawberry.field(description="Your recipes.")
    def recipes(self, info: Info) -> list[Recipe]:
        return [
            Recipe(
                name=r.name,
                kind=r.kind,
                dataset=r.spec.dataset,
                state=r.state,
                paused_reason=r.paused_reason,
                on_new_data=r.triggers.on_new_data,
                on_new_model=r.triggers.on_new_model,
                every=r.triggers.every,
                base_model=r.base_model,
                runs=r.runs,
            )
            for r in _ctx(info)["automation"].recipes.list(_ctx(info)["user"].user)
        ]

    @strawberry.field(description="Your webhooks and their deliveries.")
    def webhooks(self, info: Info) -> list[Webhook]:
        ctx = _ctx(info)
        return [
            Webhook(id=h.id, url=h.url, events=list(h.events))
            for h in ctx["automation"].webhooks.list(ctx["user"].user)
        ]


def _dataset(info: Info, name: str) -> Dataset:
    ctx = _ctx(info)
    described = describe_dataset(ctx["settings"], ctx["desk"], ctx["versions"], name)
    return Dataset(
        name=name,
        description=described.description,
        rows=described.rows,
        version=None if described.version is None else str(described.version),
        columns=[Column(name=c.name, dtype=c.dtype, role=c.role) for c in described.columns],
        versions=[
            DatasetVersion(
                number=v.number,
                created=v.created,
                rows=v.rows,
                schema_hash=v.schema_hash,
                columns_added=list(v.schema_change.added) if v.schema_change else [],
                columns_dropped=list(v.schema_change.dropped) if v.schema_change else [],
            )
            for v in described.versions
        ],
    )


def _masked(error: GraphQLError) -> bool:
    """Mask every error but the server's own refusals and the query's own mistakes."""
    return error.original_error is not None and not isinstance(error.original_error, Refusal)


SCHEMA = strawberry.Schema(
    query=Query,
    extensions=[
        FragmentLimit,
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: MaxTokensLimiter(max_token_count=2000),
        lambda: MaxAliasesLimiter(max_alias_count=20),
        lambda: AddValidationRules([CostLimit]),
        lambda: MaskErrors(should_mask_error=_masked),
    ],
)


async def context(
    user: User,
    settings: SettingsDep,
    store: StoreDep,
    registry: RegistryDep,
    automation: AutomationDep,
    desk: DeskDep,
    versions: VersionsDep,
) -> dict[str, Any]:
    """The signed-in user and the parts resolvers read; a request without a valid token gets 401."""
    return {
        "user": user,
        "settings": settings,
        "store": store,
        "registry": registry,
        "automation": automation,
        "desk": desk,
        "versions": versions,
    }


router = GraphQLRouter(
    SCHEMA,
    path="/v1/graphql",
    graphql_ide=None,
    allow_queries_via_get=False,
    context_getter=context,
    include_in_schema=False,
)
