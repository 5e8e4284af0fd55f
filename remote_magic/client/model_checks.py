"""The server's checks of a model and spec before any row is read, run here: the dry run
(`dryrun.py`) and `Client.cost` share them, so a job that would be refused at once is not priced.

Each check is the server's own code (`specs.resolve`, `payload.scan`, the model family's canonical form
and bounds, the DP trainer's label rules), not a copy of it.
"""

from __future__ import annotations

from ..contract.payload import package_model, scan
from ..contract.specs import Resolved, resolve
from ..contract.types import continuous_label_hint
from ..contract.wire import DatasetInfo, DatasetSpec, is_dp
from ..families import family as family_named
from ..families import family_for
from ..families.base import (
    ModelFamily,
    Plan,
    check_classes_fit,
    check_kind,
    check_public_classes,
    check_public_levels,
    is_classifier_task,
)
from ..families.dpboost.family import check_label


def check_model(
    model: object, spec: DatasetSpec, dataset: DatasetInfo, kind: str = "train"
) -> tuple[Resolved, ModelFamily, Plan]:
    """Refuse (`Refusal`) what the server would refuse of this model and spec before any row is read;
    return the resolved spec, the model's family and its plan."""
    resolved = resolve(spec, dataset.columns, dataset.column_levels)
    scan(package_model(model))
    family = family_for(model)
    plan = family.canonical(model)
    if dataset.bounds is not None:
        family.check_bounds(plan, dataset.bounds.for_kind(kind))
    if kind == "train" and dataset.policy is not None and dataset.policy.privacy == "dp":
        # what the DP trainer refuses (its task, a Pipeline, its parameters, the label's declarations)
        private = family_named("dpboost").canonical(model)
        classifier = is_classifier_task(private.task)
        check_label(
            classifier,
            dataset.label_ranges.get(spec.label),
            dataset.column_levels.get(spec.label, spec.classes),
            hint=continuous_label_hint(spec.label, resolved.label_dtype) if classifier else "",
            label=spec.label,
        )
    check_kind(kind, plan.base is not None, plan.preprocess is not None, plan.stops_early)
    check_classes_fit(plan.task, spec.classes)
    if dataset.policy is not None and is_dp(dataset.policy.privacy):
        levels = dataset.column_levels.get(spec.label, spec.classes)
        check_public_classes(family, plan, spec.label, levels)
        check_public_levels(family, plan)
    return resolved, family, plan
