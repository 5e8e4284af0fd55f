"""Who may see and use which registered version, references (`churn@3`, `@latest`, `@champion`) and the
views of versions and lineage that the API, the GraphQL view and the automation show.

A version is visible to its model's owner and to the users the data owner grants in `[registry] grants`;
for everyone else a model does not exist (the same answer as for a missing one). Only the owner moves
aliases and deletes versions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from remote_magic.contract.automation_wire import (
    REF,
    Lineage,
    LineageChain,
    ModelInfo,
    ModelList,
    ModelVersion,
)
from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import DatasetSpec, DPTraining, MetricPoint
from remote_magic.families import MODEL_FILE

from ..config.settings import Settings
from ..plan import BaseModelRef
from .records import ModelRegistry, VersionRow

MAIN_METRICS = ("auc", "accuracy", "r2", "rmse", "log_loss")
MAX_LINEAGE = 1000


def main_metric(
    metrics: dict[str, float | None], intervals: dict[str, list[float]] | None = None
) -> MetricPoint | None:
    """The metric that tells runs apart, with its 95% interval where the result has one (mode dp)."""
    for name in MAIN_METRICS:
        if metrics.get(name) is not None:
            return MetricPoint(name=name, eval=metrics[name], eval_interval=(intervals or {}).get(name))
    return None


def released_classes(result: dict) -> list[str] | None:
    """A classifier's classes as its job's result released them (the training split's, else the
    evaluation's), as text in text order; the labels alone, not their counts. The client orders them
    by the label's type, the order of the model's codes (5 before 10)."""
    summary = result.get("summary") or {}
    split = summary.get("train") or summary.get("eval") or {}
    return [c["label"] for c in split.get("classes", [])] or None


def _missing(ref: str) -> Refusal:
    return Refusal("unknown_model", f"no model version {ref!r} is available to you")


class Registry:
    """The registry as users see it: references resolved, visibility applied, views built."""

    def __init__(self, settings: Settings, store: ModelRegistry, jobs_dir: Path):
        self.settings = settings
        self.store = store
        self.jobs_dir = jobs_dir

    def may_use(self, user: str, name: str) -> bool:
        owner = self.store.owner(name)
        return owner is not None and (owner == user or user in self.settings.registry.grants.get(name, []))

    def resolve(self, user: str, ref: str) -> VersionRow:
        """The version a reference names, if `user` may use it; Refusal('unknown_model') otherwise."""
        match = REF.match(ref)
        if match is None:
            raise Refusal("invalid_request", "a model reference is NAME@VERSION, NAME@latest or NAME@ALIAS")
        name, selector = match.groups()
        if not self.may_use(user, name):
            raise _missing(ref)
        if selector == "latest":
            row = self.store.latest(name)
        elif selector.isdigit():
            row = self.store.version(name, int(selector))
        else:
            number = self.store.aliases(name).get(selector)
            row = self.store.version(name, number) if number is not None else None
        if row is None:
            raise _missing(ref)
        return row

    def model_file(self, row: VersionRow) -> Path:
        return self.jobs_dir / row.job_id / MODEL_FILE

    def base_for(self, user: str, ref: str) -> BaseModelRef:
        """What a job that continues (or evaluates) a registered version keeps in its plan."""
        row = self.resolve(user, ref)
        path = self.model_file(row)
        if not path.exists():
            raise Refusal("base_model_unavailable", f"the model file of {row.ref} is no longer on the server")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return BaseModelRef(ref=row.ref, name=row.name, number=row.number, job=row.job_id, sha256=digest)

    def owned(self, user: str, name: str) -> None:
        """Raise unless `user` owns the model (others who may see it get 'forbidden')."""
        owner = self.store.owner(name)
        if owner is None or (owner != user and not self.may_use(user, name)):
            raise Refusal("unknown_model", f"no model named {name!r} is available to you")
        if owner != user:
            raise Refusal("forbidden", f"only the owner of {name!r} may change it")

    def check_name(self, user: str, name: str) -> None:
        """A name a user may register under: new, or already theirs."""
        owner = self.store.owner(name)
        if owner is not None and owner != user:
            raise Refusal("forbidden", f"the model name {name!r} belongs to another user; choose another")

    # views
    def view(self, row: VersionRow, aliases: dict[str, int] | None = None) -> ModelVersion:
        aliases = self.store.aliases(row.name) if aliases is None else aliases
        metrics = {k: float(v) for k, v in row.result.get("metrics", {}).items() if v is not None}
        return ModelVersion(
            name=row.name,
            number=row.number,
            ref=row.ref,
            created=row.created,
            aliases=sorted(a for a, n in aliases.items() if n == row.number),
            main_metric=main_metric(metrics, row.result.get("intervals")),
            metrics=metrics,
            rounds=int(row.result.get("rounds", {}).get("total", 0)),
            lineage=Lineage(
                origin=row.origin,  # type: ignore[arg-type]
                parent=row.parent,
                base_sha256=row.base_sha256,
                dataset=row.dataset,
                dataset_version=row.dataset_version,
                spec=DatasetSpec.model_validate(row.spec),
                params=row.params,
                job_id=row.job_id,
                user=row.owner,
            ),
            training=DPTraining.model_validate(trained) if (trained := row.result.get("training")) else None,
            label=(row.result.get("ran_with") or {}).get("label"),
            classes=released_classes(row.result),
        )

    def visible_names(self, user: str) -> list[tuple[str, str]]:
        return [(n, o) for n, o in self.store.names() if o == user or self.may_use(user, n)]

    def models(self, user: str, name: str | None = None) -> ModelList:
        names = self.visible_names(user)
        if name is not None:
            names = [(n, o) for n, o in names if n == name]
            if not names:
                raise Refusal("unknown_model", f"no model named {name!r} is available to you")
        models = []
        for model, owner in names:
            aliases = self.store.aliases(model)
            versions = [self.view(row, aliases) for row in self.store.versions(model)]
            models.append(ModelInfo(name=model, owner=owner, aliases=aliases, versions=versions))
        return ModelList(models=models)

    def lineage(self, user: str, ref: str) -> LineageChain:
        """The version and its registered ancestors, newest first, as far as `user` may see."""
        row: VersionRow | None = self.resolve(user, ref)
        chain: list[ModelVersion] = []
        while row is not None and len(chain) < MAX_LINEAGE:
            chain.append(self.view(row))
            if row.parent is None:
                break
            name, number = row.parent.split("@")
            row = self.store.version(name, int(number)) if self.may_use(user, name) else None
        return LineageChain(versions=chain)
