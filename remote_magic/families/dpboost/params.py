"""An XGBoost estimator's parameters as the DP trainer's settings: honoured, harmless, or refused by name.

Honoured: `n_estimators` (rounds), `max_depth`, `learning_rate`/`eta`, `reg_lambda`/`lambda`,
`objective` (binary:logistic, multi:softprob or multi:softmax, reg:squarederror), `num_class`,
`random_state`/`seed` (the structure's seed: the structure is public whoever picks it) and a public
`base_score`. Harmless (resources, input handling, what is reported, and `min_child_weight`, which the
leaf floor of mode dp_eval_only required and notebooks written for it carry): accepted and ignored. Everything
else changes how XGBoost would fit the trees, which the DP trainer does not do, so a value other than
XGBoost's default is refused, naming the parameter; `None` (what an `XGBClassifier()` carries) is the
default. Parameters left unset get the trainer's defaults (`settings.py`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from ...contract.codes import Refusal
from .objectives import BINARY, MULTICLASS, REGRESSION
from .settings import MAX_DEPTH, Settings

HARMLESS = {
    "n_jobs",
    "nthread",
    "verbosity",
    "silent",
    "tree_method",
    "device",
    "max_bin",
    "enable_categorical",
    "eval_metric",
    "importance_type",
    "validate_parameters",
    "feature_types",
    "use_label_encoder",
    "disable_default_eval_metric",
    "min_child_weight",
}
# XGBoost's defaults of the parameters that have no meaning here (values equal to them are accepted).
DEFAULTS: dict[str, tuple] = {
    "subsample": (1, 1.0),
    "colsample_bytree": (1, 1.0),
    "colsample_bylevel": (1, 1.0),
    "colsample_bynode": (1, 1.0),
    "gamma": (0, 0.0),
    "min_split_loss": (0, 0.0),
    "max_leaves": (0,),
    "grow_policy": ("depthwise",),
    "reg_alpha": (0, 0.0),
    "alpha": (0, 0.0),
    "scale_pos_weight": (1, 1.0),
    "max_delta_step": (0, 0.0),
    "num_parallel_tree": (1,),
    "monotone_constraints": ("()", "", (), [], {}),
    "interaction_constraints": ("", "[]", (), []),
    "sampling_method": ("uniform",),
    "max_cat_to_onehot": (4,),
    "max_cat_threshold": (64,),
    "early_stopping_rounds": (),
    "callbacks": ((), []),
    "feature_weights": (),
    "multi_strategy": ("one_output_per_tree",),
    "booster": ("gbtree",),
    "refresh_leaf": (1,),
    "process_type": ("default",),
}
OBJECTIVES = {BINARY: BINARY, MULTICLASS: MULTICLASS, "multi:softmax": MULTICLASS, REGRESSION: REGRESSION}
ALIASES = {
    "eta": "learning_rate",
    "lambda": "reg_lambda",
    "seed": "random_state",
    "num_boost_round": "n_estimators",
}


def _is_default(name: str, value: Any) -> bool:
    if value is None:
        return True
    if name == "missing":
        return isinstance(value, float) and math.isnan(value)
    return any(value == d for d in DEFAULTS[name])


def _number(name: str, value: Any, low: float, high: float, integer: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (low <= value <= high) or (integer and int(value) != value):
        kind = "an integer" if integer else "a number"
        raise Refusal(
            "parameter_out_of_bounds", f"{name} must be {kind} from {low:g} to {high:g}, not {value!r}"
        )
    return int(value) if integer else float(value)


def settings_from_params(
    params: dict,
    classifier: bool | None = None,
    num_class: int | None = None,
    label_range: tuple[float, float] | None = None,
    max_rounds: int = 1000,
) -> Settings:
    """The DP trainer's settings for an estimator's parameters (`get_params()`, or a `params` dict).

    `classifier` says which estimator it was (None: from the objective), `num_class` how many classes
    the label has (public: the owner's declaration), `label_range` the owner's public range of a
    regression label."""
    given = {ALIASES.get(k, k): v for k, v in params.items() if v is not None}
    refused = sorted(
        name
        for name, value in given.items()
        if name not in HARMLESS
        and name not in {"n_estimators", "max_depth", "learning_rate", "reg_lambda", "objective"}
        and name not in {"num_class", "random_state", "base_score", "missing"}
        and (name not in DEFAULTS or not _is_default(name, value))
    )
    if "missing" in given and not _is_default("missing", given["missing"]):
        refused.append("missing")
    if refused:
        raise Refusal(
            "parameter_out_of_bounds",
            f"the DP trainer has no use for {', '.join(refused)}: it draws the split structure at random "
            "and sets leaves from noisy sums; remove them (or set them to XGBoost's defaults)",
        )
    objective = str(given.get("objective") or (REGRESSION if classifier is False else BINARY))
    if objective not in OBJECTIVES:
        raise Refusal(
            "unsupported_model",
            f"objective {objective!r}: the DP trainer fits binary:logistic, multi:softprob and "
            "reg:squarederror",
        )
    objective = OBJECTIVES[objective]
    classes = int(given.get("num_class") or num_class or 0)
    if objective == BINARY and (num_class or 2) > 2:
        objective = MULTICLASS
    if objective == MULTICLASS and classes < 2:
        raise Refusal(
            "unsupported_model",
            "a multiclass model (multi:softprob) needs the label's number of classes, three or more "
            "(num_class, or the declared classes); for a label of two classes use binary:logistic",
        )
    if objective == REGRESSION and label_range is None:
        raise Refusal("unsupported_model", "a DP regression needs the data owner's public range of the label")
    settings = Settings(
        objective=objective,
        num_class=classes if objective == MULTICLASS else 1,
        label_range=label_range if objective == REGRESSION else None,
    )
    changes: dict[str, Any] = {}
    if "n_estimators" in given:
        changes["rounds"] = _number("n_estimators", given["n_estimators"], 1, max_rounds, integer=True)
    if "max_depth" in given:
        changes["max_depth"] = _number("max_depth", given["max_depth"], 1, MAX_DEPTH, integer=True)
    if "learning_rate" in given:
        changes["learning_rate"] = _number("learning_rate", given["learning_rate"], 1e-6, 1.0)
    if "reg_lambda" in given:
        changes["reg_lambda"] = _number("reg_lambda", given["reg_lambda"], 0.0, 1e9)
    if "random_state" in given:
        changes["seed"] = _number("random_state", given["random_state"], 0, 2**63 - 1, integer=True)
    if "base_score" in given:
        changes["base_margin"] = _base_margin(settings, given["base_score"])
    return replace(settings, **changes)


def _base_margin(settings: Settings, value: Any) -> tuple[float, ...]:
    """A public base_score as the starting margin (a probability for the logistic loss)."""
    if settings.objective == BINARY:
        p = _number("base_score", value, 1e-6, 1 - 1e-6)
        return (math.log(p / (1 - p)),)
    if settings.objective == MULTICLASS:
        raise Refusal("parameter_out_of_bounds", "base_score of a multiclass DP model is estimated, not set")
    lo, hi = settings.label_range  # type: ignore[misc]
    return (_number("base_score", value, lo, hi),)
