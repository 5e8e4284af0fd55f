"""Accepting a federated training's step: every check a server makes itself before a worker starts.

The analyst's coordinator sends one batch of trees at a time (`FederatedStepRequest`); this server never
learns the other servers. It takes part only in mode dp; the spec is checked against the schema as any
job's; the settings against the dataset's bounds (rounds, depth); the features against the schema and
the owner's declared ranges and levels; the rho against the owner's training budget; the model so far
must be a JSON document (XGBoost parses it only in the sandbox), or, at a step that continues the
training's session, the previous batch's leaf values finite numbers. What a step costs follows from the
settings alone: with random splits and no released intercept every round costs `rho / rounds`, so a
batch of `r` rounds costs `r * rho / rounds` (docs/privacy.md, "Total"), charged at admission. A training
whose numeric candidates come from its DP sketch (`check_sketch`, before its first batch) pays
`SKETCH_SHARE * rho` for the sketch and spreads the rest over its rounds; its every step carries the
sketch's released counts, and the server checks the candidates are their quantiles.
"""

from __future__ import annotations

import json
import math

from remote_magic.contract.codes import Refusal
from remote_magic.contract.federated import LEAF_LIMIT, check_columns
from remote_magic.contract.wire import (
    DatasetSpec,
    FederatedEvaluateRequest,
    FederatedSketchRequest,
    FederatedStepRequest,
)
from remote_magic.families import MODEL_FILE
from remote_magic.families.dpboost.candidates import SKETCH_SHARE, quantile_candidates

from ..config.settings import Settings
from ..data.versions import Versions
from ..plan import JobPlan
from ..protocol import FederatedOrder
from .catalog import check_spec, version_of


def check_step(
    settings: Settings, versions: Versions, datasets: list[str], body: FederatedStepRequest
) -> tuple[DatasetSpec, JobPlan, FederatedOrder, bytes | None]:
    """The checked spec, its plan, the worker's order and the model's bytes (None: the step carries the
    previous batch's leaves for the training's session); or raise Refusal."""
    spec, plan = _check_training(settings, versions, datasets, body)
    train = body.settings
    rounds = body.batch.get("rounds")
    if not isinstance(rounds, int) or not 1 <= rounds <= min(train.batch_size, train.rounds):
        raise Refusal("invalid_request", "the batch's rounds must be 1 to the batch size")
    if (body.model is None) == (body.leaves is None):
        raise Refusal(
            "invalid_request", "a step carries either the model so far or the previous batch's leaves"
        )
    if body.leaves is not None and (body.training is None or body.trees is None):
        raise Refusal(
            "invalid_request", "a step with the previous batch's leaves needs the training's id and trees"
        )
    model = None
    if body.model is not None:
        model = body.model.encode()
        if len(model) > settings.server.max_payload_mb * 2**20:
            raise Refusal("payload_too_large", "the model so far is larger than this server accepts")
        try:
            parsed = json.loads(model)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or "learner" not in parsed:
            raise Refusal("invalid_model", "the model so far must be an XGBoost JSON model")
    else:
        _check_leaves(body.leaves or [])
    order = FederatedOrder(
        features=[f.model_dump() for f in body.features],
        settings=train.model_dump(),
        batch=body.batch,
        model_file=MODEL_FILE,
        rho=_leaves_rho(body),
        step_rho=_leaves_rho(body) * rounds / train.rounds,
        leaves=body.leaves,
        trees=body.trees,
    )
    return spec, plan, order, model


def check_evaluation(
    settings: Settings, versions: Versions, datasets: list[str], body: FederatedEvaluateRequest
) -> tuple[DatasetSpec, JobPlan, FederatedOrder]:
    """The checked spec, its plan and the worker's order for a training's final evaluation from its
    session: the training's own checks (its session was staged for the same spec, features, settings
    and rho), and the last batch's leaves finite; or raise Refusal."""
    spec, plan = _check_training(settings, versions, datasets, body)
    _check_leaves(body.leaves)
    order = FederatedOrder(
        features=[f.model_dump() for f in body.features],
        settings=body.settings.model_dump(),
        model_file=MODEL_FILE,
        rho=_leaves_rho(body),
        leaves=body.leaves,
        trees=body.trees,
        evaluate=True,
    )
    return spec, plan, order


def check_sketch(
    settings: Settings, versions: Versions, datasets: list[str], body: FederatedSketchRequest
) -> tuple[DatasetSpec, JobPlan, FederatedOrder]:
    """The checked spec, its plan and the worker's order for a training's sketch: the training's own
    checks, and public ranges of numeric features within the owner's declared ones; or raise Refusal."""
    spec, plan = _check_training(settings, versions, datasets, body)
    _check_ranges(settings, spec.dataset, body)
    order = FederatedOrder(
        features=[f.model_dump() for f in body.features],
        settings=body.settings.model_dump(),
        model_file=MODEL_FILE,
        rho=body.rho * (1 - SKETCH_SHARE),
        step_rho=body.rho * SKETCH_SHARE,
        sketch={name: tuple(r) for name, r in body.ranges.items()},
        prior=body.prior,
    )
    return spec, plan, order


def _leaves_rho(body: FederatedStepRequest | FederatedEvaluateRequest) -> float:
    """What a training's leaves spend: its rho, less its sketch's share when it has one."""
    return body.rho * (1 - SKETCH_SHARE) if body.sketch is not None else body.rho


def _check_ranges(
    settings: Settings,
    dataset: str,
    body: FederatedSketchRequest | FederatedStepRequest | FederatedEvaluateRequest,
) -> None:
    """The sketch's ranges: numeric features', each within the owner's declared range (the grids are
    public, and every server counts over the same ones)."""
    ranges = body.ranges if isinstance(body, FederatedSketchRequest) else body.sketch.ranges  # type: ignore[union-attr]
    declared = settings.datasets[dataset].column_ranges
    numeric = {f.name for f in body.features if f.kind == "numeric"}
    for name, (lo, hi) in ranges.items():
        if name not in numeric:
            raise Refusal("invalid_request", f"the sketch's column {name!r} is not a numeric feature")
        own = declared.get(name)
        if (
            not (math.isfinite(lo) and math.isfinite(hi) and lo < hi)
            or own is None
            or lo < own[0]
            or hi > own[1]
        ):
            raise Refusal(
                "invalid_request", f"the sketch's column {name!r}: a range outside its declared range"
            )


def _check_sketch_use(
    settings: Settings, dataset: str, body: FederatedStepRequest | FederatedEvaluateRequest
) -> None:
    """The candidates of a training with a sketch: each sketched column's are the quantiles of the
    sketch's released counts (public); or raise Refusal."""
    if body.sketch is None:
        return
    _check_ranges(settings, dataset, body)
    try:
        found = quantile_candidates(body.sketch.ranges, body.sketch.counts)
    except ValueError as exc:
        raise Refusal("invalid_request", f"the training's sketch is not usable: {exc}") from None
    for f in body.features:
        if f.name in found and tuple(f.candidates) != found[f.name]:
            raise Refusal(
                "invalid_request", f"column {f.name!r}: its candidates are not the quantiles of the sketch"
            )


def _check_training(
    settings: Settings,
    versions: Versions,
    datasets: list[str],
    body: FederatedStepRequest | FederatedEvaluateRequest | FederatedSketchRequest,
) -> tuple[DatasetSpec, JobPlan]:
    """What every request of a training must pass: the spec against the schema, mode dp, no derived
    columns, the settings within the dataset's bounds, the rho within its owner's, the features."""
    spec, plan = check_spec(settings, versions, datasets, body.spec)
    name = spec.dataset
    policy = settings.policy_for(name)
    if not policy.trains_privately:
        raise Refusal(
            "federated_needs_dp",
            f"dataset {name!r} is in privacy mode {policy.privacy}: only mode dp takes part in a federated "
            "training, whose every number is a DP release",
        )
    if spec.derive:
        raise Refusal("invalid_request", "a federated training takes the dataset's columns, no derived ones")
    bounds = settings.bounds_for(name)
    train = body.settings
    if train.rounds > bounds.max_n_estimators or train.max_depth > bounds.max_depth:
        raise Refusal(
            "parameter_out_of_bounds",
            f"{train.rounds} rounds of depth {train.max_depth}: this dataset allows at most "
            f"{bounds.max_n_estimators} rounds and depth {bounds.max_depth}",
        )
    if body.rho > policy.dp_rho_train * (1 + 1e-9):
        raise Refusal(
            "parameter_out_of_bounds",
            f"a training of rho {body.rho:g}: this dataset's owner allows rho {policy.dp_rho_train:g} "
            "per training",
        )
    config = settings.datasets[name]
    dtypes = dict(version_of(versions, body.spec.dataset).columns)
    check_columns(body.features, plan.features, dtypes, config.column_ranges, config.column_levels)
    if not isinstance(body, FederatedSketchRequest):
        _check_sketch_use(settings, name, body)
    return spec, plan


def _check_leaves(leaves: list[float]) -> None:
    if not all(math.isfinite(v) and abs(v) <= LEAF_LIMIT for v in leaves):
        # Two leaves of 1e308 make a multiclass margin inf - inf = NaN for the rows that reach them, and
        # the step's failure would say exactly whether any row did (booster.check_leaves, the model path).
        raise Refusal("invalid_request", f"the batch's leaf values must be finite, within {LEAF_LIMIT:g}")
