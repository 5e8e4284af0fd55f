"""The DP trainer as a model family: what `%%remote_train` trains with in mode dp.

The plan half reads an XGBoost estimator exactly as the XGBoost family does (its `canonical`), then
keeps only what the DP trainer can honour: the parameters `params.py` maps (any other is refused by
name), no Pipeline, no notebook objective or metric, a regression only with the owner's label range.
The partition half runs the `Coordinator` over `Partitions`: each request's exact sums are the sum of
`Partition.sums` mapped over the partitions (each keeps its `Partition`, its binned rows and margins, in
`Part.state` between calls), every update is mapped back, and all noise comes from `Run.noise` and
`Run.select` (the trusted parent's release desk on a server). So the same code runs on one machine and
on a cluster's partitions. The trained model is an ordinary XGBoost Booster, so prediction, leaf counts,
export and the report are the XGBoost family's own code (`Trained`).

Split candidates are public: declared ranges and levels, else a DP sketch (`SKETCH_SHARE` of the budget).

Why it is long: it is every method of the `ModelFamily` protocol for the DP trainer, both halves, most
of them one line handing over to the XGBoost family; the training's steps (plan, sketch, rounds from the
released count, coordinator, export) read best in one place.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
from sklearn.pipeline import Pipeline

from ...contract.codes import Refusal
from ...contract.federated import LEAF_LIMIT
from ...contract.rows import is_text
from ...contract.wire import ModelBounds
from .. import MODEL_FILE, PARAMS_FILE
from ..base import (
    PROGRESS_EVERY_S,
    STOPS_EARLY,
    Part,
    Partitions,
    Plan,
    PrivateOrder,
    Run,
    is_classifier_task,
)
from ..xgboost import bounds as xgboost_bounds
from ..xgboost.family import FAMILY as XGBOOST
from ..xgboost.family import Trained, ready_to_score
from ..xgboost.leaves import check_booster
from .booster import base_categories, base_read_by, load
from .candidates import SKETCH_SHARE, CandidatePlan, Declared
from .coordinator import Coordinator
from .features import Features, Kind
from .on_parts import apply_update, counts_of, finish, schema, set_up, sketch, sum_of, sums
from .params import check_params, settings_from_params
from .partition import LeafUpdate, histogram_threads
from .settings import LARGE_ROUNDS, Settings

ANY_LABEL_RANGE = (0.0, 1.0)  # stands in for the owner's range while only the parameters are checked


def check_label(
    classifier: bool,
    label_range: tuple[float, float] | None,
    label_classes: list[str] | None,
    expected_classes: int | None = None,
    hint: str = "",
    label: str = "LABEL",
) -> None:
    """Refuse a DP training whose label has no public description: a regression's range
    (`label_ranges`), a classifier's classes (`column_levels.<label>`, or the spec's `classes`). Without
    public classes, the classes would be the admitted rows' own labels: one row with a label of its own
    would make a class, seen in the released model or answered by a refusal, and gone without the row.
    `expected_classes`: the number a federated training's settings fix, which the declaration must match;
    `hint`: what the label's public type says of the model on it (`continuous_label_hint`,
    `text_label_hint`), said first. A regressor on a label with public classes and no range (a 0/1 or
    true/false label) is told to classify: asking the owner for a range would be the wrong advice."""
    if not classifier and hint:
        raise Refusal("unsupported_model", hint)
    if not classifier and label_range is None and label_classes:
        raise Refusal(
            "unsupported_model",
            f"the label {label!r} has the classes {', '.join(label_classes)} (the data owner's public "
            "list) and no range: it is a classifier's label, use XGBClassifier",
        )
    if not classifier and label_range is None:
        raise Refusal(
            "unsupported_model",
            "DP training of a regression needs the data owner's public range of the label "
            f"(`label_ranges.{label}` in the dataset's config); ask the data owner to declare one",
        )
    if classifier and label_classes is None:
        raise Refusal(
            "unsupported_model",
            (f"{hint}; " if hint else "")
            + "DP training of a classifier needs the label's classes before any row is read: the data "
            f"owner's public list (`column_levels.{label}` in the dataset's config), or `classes` in the "
            "spec (e.g. [0, 1]; only rows of those classes are admitted)",
        )
    if classifier and expected_classes is not None and len(label_classes or []) != expected_classes:
        raise Refusal(
            "invalid_request",
            f"the label has {len(label_classes or [])} public classes, the training has {expected_classes}",
        )


@dataclass
class DPTrained(Trained):
    """An XGBoost family `Trained` (its code reads it) with what the DP training cost."""

    rho: float = 0.0
    trees: int = 0
    sigma_gradient: float = 0.0
    sigma_hessian: float = 0.0


def _kind(type_: pa.DataType) -> Kind:
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if is_text(type_):
        return "categorical"
    if pa.types.is_boolean(type_):
        return "boolean"
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_):
        return "numeric"
    raise Refusal("training_failed", f"a feature of type {type_} cannot be used by the DP trainer")


def declared_columns(schema: pa.Schema, order: PrivateOrder) -> CandidatePlan:
    """The owner's declarations of the feature columns, in the rows' order (a column's type is public:
    the catalog shows it)."""
    columns = []
    for field in schema:
        kind = _kind(field.type)
        lo, hi = order.column_ranges.get(field.name, (None, None))
        levels = order.column_levels.get(field.name)
        numeric, text = kind == "numeric", kind == "categorical" and levels is not None
        bounds = {"lo": lo, "hi": hi} if numeric else {}
        columns.append(Declared(field.name, kind, **bounds, levels=tuple(levels) if text else None))
    return CandidatePlan(tuple(columns))


def _led_by_base(features: Features, base: bytes) -> Features:
    try:
        return features.led_by(base_categories(base))
    except ValueError as exc:
        raise Refusal("unsupported_model", "the base model's and the public levels are too many") from exc


def settings_for(
    plan: Plan, classes: int | None, label_range: tuple[float, float] | None, max_rounds: int = 1_000_000
) -> Settings:
    """The trainer's settings for a plan: its parameters by name (`params.py`), its rounds."""
    params = dict(plan.params)
    params["n_estimators"] = plan.rounds
    task = plan.task
    classifier = True if is_classifier_task(task) else False if task == "regression" else None
    settings = settings_from_params(params, classifier, classes, label_range, max_rounds)
    return replace(settings, rounds_from_count=plan.rounds_unset)


class DPBoostFamily:
    name = "dpboost"

    def recognises(self, model: object) -> bool:
        return XGBOOST.recognises(model)

    def canonical(self, model: object, custom_code: bool = False) -> Plan:
        """XGBoost's canonical form of the model, kept to what the DP trainer honours; an estimator that
        left `n_estimators` unset gets the trainer's rounds, chosen from the released row count (at most
        LARGE_ROUNDS, `Settings.for_count`), not XGBoost's 100."""
        decoded = XGBOOST.canonical(model, custom_code)
        plan = self.adopt(decoded)
        if decoded.stops_early:
            raise Refusal("parameter_out_of_bounds", STOPS_EARLY)
        estimator = model.steps[-1][1] if isinstance(model, Pipeline) else model  # a one-step Pipeline
        if hasattr(estimator, "get_params"):  # what XGBoost's own params leave out: missing, callbacks, ...
            check_params(estimator.get_params())
        if getattr(model, "n_estimators", 0) is None:
            plan = replace(plan, rounds=LARGE_ROUNDS, rounds_unset=True)
        return plan

    def adopt(self, plan: Plan) -> Plan:
        """An XGBoost family plan as this family's, refusing by name what DP training cannot do."""
        if plan.objective is not None or plan.metric is not None:
            raise Refusal(
                "custom_code_refused",
                "DP training takes no notebook-defined objective or metric: its bounds on one row's "
                "gradients hold for binary:logistic, multi:softprob and reg:squarederror only",
            )
        if plan.preprocess is not None:
            raise Refusal(
                "unsupported_model",
                "DP training takes a bare XGBClassifier or XGBRegressor, not a Pipeline: "
                "it reads text columns as categories itself",
            )
        if plan.task != "classification":
            objective = str(plan.params.get("objective") or "")
            if objective.startswith(("binary:", "multi:")):
                plan = replace(plan, task="classification")
        settings_for(plan, None, ANY_LABEL_RANGE)  # refuses meaningless parameters before any row is read
        return replace(plan, family=self.name)

    def continued(self, plan: Plan | None, saved: bytes) -> Plan:
        return self.adopt(XGBOOST.continued(plan, saved))

    def check_bounds(self, plan: Plan, bounds: ModelBounds) -> None:
        xgboost_bounds.check(plan, bounds)
        if plan.base is not None:  # before any row is read, with the bound the trainer's margins need
            check_booster(plan.base, LEAF_LIMIT)

    def check_order(
        self,
        plan: Plan,
        label_range: tuple[float, float] | None,
        label_classes: list[str] | None,
        label_hint: str = "",
        label: str = "LABEL",
    ) -> None:
        """Refuse, before any row is read, a label the owner declared nothing public about."""
        classifier = is_classifier_task(plan.task)
        check_label(classifier, label_range, label_classes, hint=label_hint, label=label)

    def portable_base(self, plan: Plan) -> bytes:
        return XGBOOST.portable_base(plan)

    def train(self, plan: Plan, parts: Partitions, classes: list[str], run: Run) -> DPTrained:
        """Train DP trees on the partitions' training rows (on top of the plan's base model, if any)."""
        order, noise, select = run.private, run.noise, run.select
        if order is None or noise is None or select is None:
            raise Refusal("training_failed", "DP training needs the server's order and its noise")
        classifier = is_classifier_task(plan.task)
        settings = settings_for(
            plan, len(classes) if classifier else None, None if classifier else order.label_range
        )
        candidates = declared_columns(parts.map(schema)[0]["schema"], order)
        rho = order.rho
        request = candidates.request()
        if run.declare is not None:  # the parent checks every noise request against this plan
            sketched = [] if request is None else [*request.grids, *request.text]
            run.declare(settings, sketched, SKETCH_SHARE * rho if sketched else 0.0, plan.base is not None)
        if request is None:
            features = candidates.declared()
        else:
            counts = sum(counts_of(found) for found in parts.map(sketch, request))
            sketched = candidates.features(counts, noise, SKETCH_SHARE * rho, order.delta)
            features, rho = sketched.features, rho - sketched.rho
        base = None
        if plan.base is not None:
            features = _led_by_base(features, plan.base)
            base = base_read_by(plan.base, features, settings.objective_())
        threads = histogram_threads(run.threads, run.public_rows, parts.dask is not None)
        parts.map(set_up, features, settings, base, threads)
        coordinator = Coordinator(
            features,
            settings,
            rho,
            noise,
            base,
            select if settings.split_share > 0 else None,
            run.noise_many,
            select_many=run.select_many,
        )
        done, reported = 0, 0.0
        for step in coordinator.requests():
            run.check()
            update = coordinator.release(step, sum_of(parts.map(sums, step)))
            if update is not None:
                parts.map(apply_update, update)
            if isinstance(update, LeafUpdate):
                done += update.batch.rounds
                rounds = coordinator.settings.rounds  # chosen by now (`Settings.for_count`)
                if time.monotonic() - reported >= PROGRESS_EVERY_S or done >= rounds:
                    reported = time.monotonic()
                    run.report(done * plan.rounds // rounds, {})  # in the plan's rounds
        parts.map(finish)
        return self._trained(
            plan, parts, features, coordinator.settings, coordinator, rho, order.rho, run.threads
        )

    @staticmethod
    def _trained(
        plan: Plan,
        parts: Partitions,
        features: Features,
        settings: Settings,
        coordinator: Coordinator,
        rho_trees: float,
        rho: float,
        threads: int,
    ) -> DPTrained:
        booster = load(coordinator.model())
        objective = settings.objective_()
        task = (
            "regression"
            if objective.name == "reg:squarederror"
            else "multiclass"
            if objective.trees_per_round > 1
            else "binary"
        )
        params = {
            "objective": objective.name,
            "n_estimators": settings.rounds,
            "max_depth": settings.max_depth,
            "learning_rate": settings.learning_rate,
            "reg_lambda": settings.reg_lambda,
            "dp_rho": rho,
        }
        categories = {
            c.name: pa.array(c.recorded_levels, pa.string())
            for c in features.columns
            if c.kind == "categorical"
        }
        sigma_g, sigma_h = coordinator.settings.leaf_sigmas(coordinator.scales)
        return ready_to_score(
            booster,
            plan,
            parts,
            task,
            params,
            categories,
            threads,
            DPTrained,
            rho=rho,
            trees=len(coordinator.trees),
            sigma_gradient=sigma_g,
            sigma_hessian=sigma_h,
        )

    def check_columns(self, plan: Plan, columns: list[str]) -> None:
        XGBOOST.check_columns(plan, columns)

    def unrecorded_categories(self, plan: Plan) -> list[str]:
        return XGBOOST.unrecorded_categories(plan)

    def predicted_classes(self, plan: Plan) -> int | None:
        return XGBOOST.predicted_classes(plan)

    def score(self, plan: Plan, parts: Partitions, classes: list[str], run: Run) -> Trained:
        return XGBOOST.score(plan, parts, classes, run)

    def predict(self, trained: Trained, part: Part, split: str, rounds: int | None = None) -> np.ndarray:
        return XGBOOST.predict(trained, part, split, rounds)

    def leaf_counts(self, trained: Trained, part: Part, split: str, rounds: tuple[int, int]) -> list:
        return XGBOOST.leaf_counts(trained, part, split, rounds)

    def history(self, trained: Trained) -> dict | None:
        """None: a per-round metric on the training rows would be a release the budget did not pay."""
        return None

    def importance(self, trained: Trained) -> dict[str, float]:
        """Empty: the trees record no gains (`loss_changes` are 0); mode dp releases a permutation-importance
        ranking instead (`importance_ranking`)."""
        return {}

    def rounds(self, trained: Trained) -> dict[str, int]:
        return XGBOOST.rounds(trained)

    def task(self, trained: Trained) -> str:
        return trained.task

    def training(self, trained: DPTrained) -> dict[str, float | int]:
        return {
            "rho": trained.rho,
            "trees": trained.trees,
            "sigma_gradient": trained.sigma_gradient,
            "sigma_hessian": trained.sigma_hessian,
        }

    def release_facts(self, trained: DPTrained) -> dict:
        """A DP model is a DP release: what it cost is its only fact."""
        return {"dp_rho": trained.rho, "n_estimators": trained.trees}

    def export(self, trained: Trained, folder: Path) -> None:
        trained.booster.save_model(str(folder / MODEL_FILE))
        (folder / PARAMS_FILE).write_text(json.dumps(trained.params))


FAMILY = DPBoostFamily()
