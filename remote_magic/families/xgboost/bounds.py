"""The XGBoost family's light half: its parameter bounds, as a pure check of a `Plan`'s JSON
parameters, and how a model it saved is recognised.

Light (no XGBoost import), so the server's API can refuse a model beyond the bounds from the parameters
the payload scan reads, before any job exists (the worker checks the decoded model again), and the
server can tell a saved model from other bytes without parsing it with XGBoost.
"""

from __future__ import annotations

import json
import math

from ...contract.codes import Refusal
from ...contract.wire import ModelBounds
from ..base import Plan

# The metrics a model may watch while it trains: each is a mean over rows, decided by no single row.
EVAL_METRICS = ("logloss", "error", "auc", "mlogloss", "merror", "rmse", "mae")


def plan_of_scan(estimator: str | None, params: dict, rounds: int) -> Plan:
    """The plan a scanned payload states (the payload scan's plain parameters), for checking its bounds
    before a job exists."""
    objective = str(params.get("objective") or "")
    if estimator == "XGBClassifier":
        task = "classification"
    elif estimator == "XGBRegressor":
        task = "regression"
    else:
        task = (
            "binary"
            if objective.startswith("binary:")
            else "multiclass"
            if objective.startswith("multi:")
            else "regression"
        )
    return Plan(family="xgboost", params=dict(params), rounds=rounds, task=task)


def server_values(plan: Plan, bounds: ModelBounds) -> dict[str, int]:
    """The parameters this server requires that the plan leaves unset, with the values it trains with.

    Interim, until the DP trainer (issue 22): a model with `min_child_weight` unset gets the dataset's leaf
    floor instead of a refusal; an explicit value below the floor is still refused. The one place that
    decides it, so the API's intake, the worker and the dry run agree, and the client can say so."""
    if not bounds.min_leaf_rows or plan.params.get("min_child_weight") is not None:
        return {}
    floor, _ = _leaf_floor(plan, bounds.min_leaf_rows)
    return {"min_child_weight": math.ceil(floor)}


def server_values_note(values: dict[str, int]) -> str | None:
    """The result's one line about the values the server chose, or None when it chose none."""
    if not values:
        return None
    chosen = ", ".join(f"{name}={value}" for name, value in values.items())
    return f"{', '.join(values)} not set: trained with the value this dataset requires, {chosen}"


def check_stated(estimator: str | None, params: dict, rounds: int, bounds: ModelBounds) -> None:
    """Refuse parameters a payload states (the payload scan's) beyond the bounds."""
    check(plan_of_scan(estimator, params, rounds), bounds)


def is_saved(data: bytes) -> bool:
    """Whether bytes are an XGBoost JSON model (read as plain JSON, in Python)."""
    try:
        model = json.loads(data)
    except ValueError:
        return False
    return isinstance(model, dict) and isinstance(model.get("learner"), dict)


def check(plan: Plan, bounds: ModelBounds) -> None:
    """Refuse parameters beyond the server's bounds, naming the parameter and its bound; a required
    parameter left unset takes the server's value (`server_values`) in the plan."""
    plan.params.update(server_values(plan, bounds))
    params = plan.params
    checks = [
        ("n_estimators", plan.rounds, bounds.max_n_estimators),
        ("max_depth", params.get("max_depth") or 0, bounds.max_depth),
        ("max_bin", params.get("max_bin") or 0, bounds.max_bin),
    ]
    for name, value, bound in checks:
        if not isinstance(value, (int, float)) or value > bound:
            raise Refusal(
                "parameter_out_of_bounds", f"{name} = {value} exceeds this server's bound of {bound}"
            )
    if plan.rounds < 0:
        raise Refusal("parameter_out_of_bounds", "n_estimators must not be negative")
    for key in ("nthread", "n_jobs"):
        value = params.get(key)
        if value is not None and (not isinstance(value, int) or value > bounds.max_threads):
            raise Refusal(
                "parameter_out_of_bounds",
                f"{key} = {value} exceeds this server's bound of {bounds.max_threads}",
            )
    device = str(params.get("device") or "cpu")
    if device not in bounds.devices:
        allowed = ", ".join(repr(d) for d in bounds.devices)
        raise Refusal(
            "parameter_out_of_bounds",
            f"device = {device!r} is not available; this server allows {allowed}",
        )
    if bounds.min_leaf_rows:
        _check_leaf_floor(plan, bounds.min_leaf_rows)
    if params.get("tree_method") not in (None, "hist", "approx", "exact", "auto"):
        raise Refusal("parameter_out_of_bounds", "tree_method must be hist, approx, exact or auto")
    metrics = params.get("eval_metric")
    for metric in metrics if isinstance(metrics, list) else [metrics] if metrics else []:
        if metric not in EVAL_METRICS:
            raise Refusal(
                "parameter_out_of_bounds",
                f"eval_metric {metric!r} is not allowed; allowed: {', '.join(EVAL_METRICS)}",
            )


def _leaf_floor(plan: Plan, rows: int) -> tuple[float, str]:
    """The min_child_weight that makes every new leaf hold `rows` rows, decided before any data is
    touched: for objectives whose hessian per row is bounded (at most 1/4 for logistic ones, 1 for
    squared error), min_child_weight guarantees it; other objectives cannot be bounded so, and are
    refused. A refusal after training would depend on the rows, and so tell something about them."""
    objective = str(plan.params.get("objective") or "")
    if plan.objective is not None:
        raise Refusal("parameter_out_of_bounds", "a custom objective is not available on this dataset")
    if plan.task in ("classification", "binary", "multiclass"):
        if objective and not objective.startswith(("binary:logistic", "binary:logitraw", "multi:")):
            raise Refusal(
                "parameter_out_of_bounds", f"objective {objective!r} is not available on this dataset"
            )
        per_row, kind = 0.25, "a classifier"
    elif objective in ("", "reg:squarederror"):
        per_row, kind = 1.0, "squared error"
    elif objective == "reg:logistic":
        per_row, kind = 0.25, "reg:logistic"
    else:
        raise Refusal(
            "parameter_out_of_bounds",
            f"objective {objective!r} is not available on this dataset (its leaves cannot be bounded); "
            "use reg:squarederror",
        )
    return rows * per_row, kind


def _stated(value: object) -> str:
    """A stated number for a message; anything else by its type (`min_child_weight="x"` made the `:g`
    format raise, an HTTP 500, as did an int too large for a float)."""
    if isinstance(value, float) or (isinstance(value, int) and -(2**63) <= value < 2**63):
        return f"{value:g}"
    return f"a {type(value).__name__}"


def _check_leaf_floor(plan: Plan, rows: int) -> None:
    floor, kind = _leaf_floor(plan, rows)
    weight = plan.params.get("min_child_weight")
    if not isinstance(weight, (int, float)) or weight < floor:
        raise Refusal(
            "parameter_out_of_bounds",
            f"min_child_weight = {_stated(weight)} is below {floor:g}: on this dataset every leaf must hold "
            f"at least {rows} rows, which for {kind} needs min_child_weight >= {floor:g} "
            f"(set min_child_weight={math.ceil(floor)})",
        )


# Parameters XGBoost takes as whole numbers; a string or a float there (`n_estimators="20"`) is a mistake
# plain XGBoost fails on, which canonicalising would otherwise turn into a number silently.
WHOLE_NUMBER_PARAMS = ("n_estimators", "max_depth", "max_bin", "nthread", "n_jobs", "num_parallel_tree")


def check_whole_numbers(params: dict) -> None:
    """Refuse, by name, a whole-number parameter given as another type (text, a decimal, true/false)."""
    for name in WHOLE_NUMBER_PARAMS:
        value = params.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise Refusal(
                "parameter_out_of_bounds",
                f"{name} must be a whole number (int), not {value!r} ({type(value).__name__})",
            )
