"""An XGBoost estimator's parameters as the DP trainer's settings: honoured, harmless, or refused by name.

`PARAMETERS` is the one table of every parameter of `XGBClassifier` / `XGBRegressor` (`get_params()`,
xgboost 3.x) and the `params` dict names XGBoost takes: what the DP trainer does with it, and why.
Honoured: the trainer uses the value (`settings_from_params`). Harmless: accepted at any value, because it
changes neither what is trained nor what is released (resources, logging, what a local model reports).
Refused: any value but XGBoost's default (listed; `None`, what an `XGBClassifier()` carries, is the
default) is refused by name with the reason, before a job exists: it asks XGBoost to fit trees in a way
the DP trainer does not (its splits come from public candidates, its leaves from noisy sums). A name the
table does not know is refused too. Parameters left unset get the trainer's defaults (`settings.py`).
docs/privacy.md ("The DP trainer's parameters") shows the table.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import replace
from typing import Any

from ...contract.codes import Refusal
from ..xgboost.bounds import EVAL_METRICS
from .objectives import BINARY, MULTICLASS, REGRESSION
from .settings import MAX_DEPTH, Settings

HONOURED, HARMLESS, REFUSED = "honoured", "harmless", "refused"
_STRUCTURE = "splits come from public candidates"
_LEAVES = "leaves come from noisy gradient sums"
_THREADS = "threads: the server sets them"
# name: (what the trainer does with it, XGBoost's defaults (a refused parameter's accepted values), why)
PARAMETERS: dict[str, tuple[str, tuple, str]] = {
    "n_estimators": (HONOURED, (), "the rounds (unset: chosen from the released row count)"),
    "max_depth": (HONOURED, (), f"each tree's depth, 1 to {MAX_DEPTH}"),
    "learning_rate": (HONOURED, (), "the step each round's leaves are scaled by"),
    "reg_lambda": (HONOURED, (), "the Newton leaves' L2 term"),
    "objective": (HONOURED, (), "binary:logistic, multi:softprob or multi:softmax, reg:squarederror"),
    "num_class": (HONOURED, (), "the classes of a multiclass model (else the owner's declared ones)"),
    "random_state": (HONOURED, (), "the seed of the split structure (public whoever picks it)"),
    "base_score": (HONOURED, (), "a public starting prediction (unset: a DP estimate)"),
    "n_jobs": (HARMLESS, (), _THREADS),
    "nthread": (HARMLESS, (), _THREADS),
    "verbosity": (HARMLESS, (), "logging"),
    "silent": (HARMLESS, (), "logging"),
    "validate_parameters": (HARMLESS, (), "XGBoost's own parameter check"),
    "importance_type": (HARMLESS, (), "what your local model reports; mode dp releases a noisy ranking"),
    "enable_categorical": (HARMLESS, (), "the DP trainer reads text columns as categories itself"),
    "use_label_encoder": (HARMLESS, (), "an old XGBoost setting with no effect"),
    "device": (HARMLESS, (), "where XGBoost would compute; the trainer's sums run on the server's CPUs"),
    "min_child_weight": (
        HARMLESS,
        (),
        "mode dp_eval_only's leaf floor; in mode dp the noise protects leaves (no longer yours to set)",
    ),
    "eval_metric": (
        REFUSED,
        EVAL_METRICS,
        "mode dp releases auc, log loss and accuracy (rmse, mae and r2) and a curve in log loss "
        "(rmse): those are accepted, another would not be released",
    ),
    "disable_default_eval_metric": (REFUSED, (0, False), "mode dp releases its own metrics"),
    "missing": (REFUSED, (), "a missing value is NULL or NaN in the table; no other value stands for it"),
    "tree_method": (REFUSED, ("hist", "auto"), _STRUCTURE),
    "max_bin": (REFUSED, (256,), "splits come from the owner's ranges or a DP sketch, not XGBoost's bins"),
    "subsample": (REFUSED, (1, 1.0), "every training row is in every sum the proof counts"),
    "sampling_method": (REFUSED, ("uniform",), "every training row is in every sum the proof counts"),
    "colsample_bytree": (REFUSED, (1, 1.0), _STRUCTURE),
    "colsample_bylevel": (REFUSED, (1, 1.0), _STRUCTURE),
    "colsample_bynode": (REFUSED, (1, 1.0), _STRUCTURE),
    "feature_weights": (REFUSED, (), _STRUCTURE),
    "gamma": (REFUSED, (0, 0.0), _STRUCTURE),
    "min_split_loss": (REFUSED, (0, 0.0), _STRUCTURE),
    "max_leaves": (REFUSED, (0,), "trees grow level by level to max_depth"),
    "grow_policy": (REFUSED, ("depthwise",), "trees grow level by level to max_depth"),
    "interaction_constraints": (REFUSED, ("", "[]", (), []), _STRUCTURE),
    "monotone_constraints": (REFUSED, ("()", "", (), [], {}), _STRUCTURE),
    "max_cat_to_onehot": (REFUSED, (4,), "splits come from the owner's declared levels"),
    "max_cat_threshold": (REFUSED, (64,), "splits come from the owner's declared levels"),
    "feature_types": (REFUSED, (), "the server reads each column's type from the dataset"),
    "reg_alpha": (REFUSED, (0, 0.0), _LEAVES),
    "alpha": (REFUSED, (0, 0.0), _LEAVES),
    "max_delta_step": (REFUSED, (0, 0.0), _LEAVES),
    "scale_pos_weight": (REFUSED, (1, 1.0), "every row weighs the same in the sums the proof bounds"),
    "num_parallel_tree": (REFUSED, (1,), "one tree per round and class"),
    "multi_strategy": (REFUSED, ("one_output_per_tree",), "one tree per round and class"),
    "booster": (REFUSED, ("gbtree",), "the DP trainer grows trees"),
    "refresh_leaf": (REFUSED, (1,), _LEAVES),
    "process_type": (REFUSED, ("default",), "the DP trainer grows new trees"),
    "early_stopping_rounds": (REFUSED, (), "the trainer runs its rounds (stopping would read eval rows)"),
    "callbacks": (REFUSED, ((), []), "no notebook code runs in training"),
}
OBJECTIVES = {BINARY: BINARY, MULTICLASS: MULTICLASS, "multi:softmax": MULTICLASS, REGRESSION: REGRESSION}
ALIASES = {
    "eta": "learning_rate",
    "lambda": "reg_lambda",
    "seed": "random_state",
    "num_boost_round": "n_estimators",
}


def _is_default(name: str, value: Any) -> bool:
    if name not in PARAMETERS:
        return False
    if value is None:
        return True
    if name == "missing":
        return isinstance(value, float) and math.isnan(value)
    if name == "eval_metric":
        metrics = value if isinstance(value, (list, tuple)) else [value]
        return all(metric in EVAL_METRICS for metric in metrics)
    return any(value == d for d in PARAMETERS[name][1])


def refused_params(params: dict) -> list[str]:
    """Each parameter the DP trainer refuses at its value, as `name (why)`; names it does not know too."""
    refused = []
    for name, value in sorted(params.items()):
        name = ALIASES.get(name, name)
        kind, _, why = PARAMETERS.get(name, (REFUSED, (), _unknown(name)))
        if kind == REFUSED and not _is_default(name, value):
            refused.append(f"{name} ({why})")
    return refused


def _unknown(name: str) -> str:
    """Why a name the table does not know is refused, with the nearest known one (a typo such as
    `n_estimator` was ignored by XGBoost, and once crashed here)."""
    near = difflib.get_close_matches(name, [*PARAMETERS, *ALIASES], n=1)
    return "not an XGBoost parameter the DP trainer knows" + (f"; did you mean {near[0]}?" if near else "")


def check_params(params: dict) -> None:
    """Refuse, by name and why, the parameters the DP trainer would not honour (`PARAMETERS`)."""
    refused = refused_params(params)
    if refused:
        raise Refusal(
            "parameter_out_of_bounds",
            f"the DP trainer of mode dp refuses {'; '.join(refused)}; remove "
            f"{'it' if len(refused) == 1 else 'them'} or set XGBoost's default",
        )


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
    check_params(params)
    given = {ALIASES.get(k, k): v for k, v in params.items() if v is not None}
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
