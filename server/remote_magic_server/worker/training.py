"""Turn a decoded model into a canonical training plan, continue training it, and evaluate it.

Whatever the notebook sent (an XGBClassifier, an XGBRegressor, a Booster, a dict of params and an
optional Booster, or a scikit-learn Pipeline of preprocessors in front of an XGBoost estimator), it
becomes one thing here: XGBoost params as JSON, a number of new rounds, an optional base Booster, and
for a Pipeline the preprocessors as class names plus JSON parameters. Resource parameters are checked
against policy bounds and refused, never clipped.

Pipelines: only the preprocessors' *parameters* cross the boundary. They are rebuilt from the canonical
form and refitted on the admitted training rows (their fitted state from the notebook, learned on other
data, is dropped); the XGBoost step continues training from its booster on the transformed rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn import metrics as skm
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler

from .staging import Staged

_MEMORY_SIGNS = (
    "bad_alloc",
    "bad_malloc",
    "failed to allocate",
    "out of memory",
    "cannot allocate memory",
    "resource temporarily unavailable",
)


class TrainingError(Exception):
    """A failure with a fixed public code and a message built only from names, never from data."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


_SCALARS = (str, int, float, bool, type(None))
_DROPPED_PARAMS = {"callbacks", "early_stopping_rounds", "feature_types", "feature_weights", "missing"}


@dataclass
class Plan:
    params: dict
    rounds: int
    base: xgb.Booster | None
    task: str
    n_classes: int = 0
    preprocess: dict | None = None
    obj: Callable | None = None
    custom_metric: Callable | None = None


_PREPROCESSORS = {
    cls.__name__: cls
    for cls in (
        StandardScaler,
        MinMaxScaler,
        SimpleImputer,
        OneHotEncoder,
        OrdinalEncoder,
        ColumnTransformer,
        Pipeline,
    )
}
_DTYPES = {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool_"}


def _canonical_value(owner: str, key: str, value: object) -> object:
    """A parameter value as JSON-able data; anything else is refused, naming the parameter."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, BaseEstimator):
        return canonical_step(value)
    if isinstance(value, type) and issubclass(value, np.generic) and value.__name__ in _DTYPES:
        return {"dtype": value.__name__}
    if isinstance(value, slice):
        return {"slice": [_canonical_value(owner, key, v) for v in (value.start, value.stop, value.step)]}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufUO" and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_canonical_value(owner, key, v) for v in value]
    raise TrainingError(
        "unsupported_model", f"{owner} parameter {key!r} has a value of a type that is not supported remotely"
    )


def canonical_step(step: object) -> dict:
    """The canonical form of an allowed preprocessor: its class name and its parameters as JSON data."""
    name = type(step).__name__
    if _PREPROCESSORS.get(name) is not type(step):
        raise TrainingError("unsupported_model", f"{name} is not a supported pipeline step")
    params = step.get_params(deep=False)  # type: ignore[attr-defined]
    return {"class": name, "params": {k: _canonical_value(name, k, v) for k, v in sorted(params.items())}}


def _rebuild_value(value: object) -> object:
    if isinstance(value, dict) and "class" in value:
        return rebuild_step(value)
    if isinstance(value, dict) and "dtype" in value:
        return getattr(np, value["dtype"])
    if isinstance(value, dict) and "slice" in value:
        return slice(*value["slice"])
    if isinstance(value, list):
        return [_rebuild_value(v) for v in value]
    return value


def rebuild_step(canonical: dict) -> object:
    """A fresh, unfitted preprocessor from its canonical form (trusted code builds it, not the payload)."""
    cls = _PREPROCESSORS[canonical["class"]]
    params = {k: _rebuild_value(v) for k, v in canonical["params"].items()}
    if cls is OneHotEncoder or cls is OrdinalEncoder:
        categories = params.get("categories")
        if isinstance(categories, (list, tuple)):
            params["categories"] = [list(c) for c in categories]
    if cls is MinMaxScaler:
        params["feature_range"] = tuple(params["feature_range"])
    if cls is Pipeline:
        params["steps"] = [tuple(step) for step in params["steps"]]
    if cls is ColumnTransformer:
        params["transformers"] = [tuple(t) for t in params["transformers"]]
    return cls(**params)


def _check_step_bounds(canonical: dict) -> None:
    params = canonical["params"]
    if canonical["class"] == "Pipeline" and params.get("memory") is not None:
        raise TrainingError("parameter_out_of_bounds", "Pipeline memory must be None on this server")
    n_jobs = params.get("n_jobs")
    if n_jobs not in (None, 1):
        raise TrainingError(
            "parameter_out_of_bounds",
            f"{canonical['class']} n_jobs = {n_jobs} exceeds this server's bound of 1",
        )
    for value in params.values():
        for item in value if isinstance(value, list) else [value]:
            for nested in item if isinstance(item, list) else [item]:
                if isinstance(nested, dict) and "class" in nested:
                    _check_step_bounds(nested)


def _task_of(objective: str | None, classifier: bool | None) -> str:
    if classifier is True:
        return "classification"
    if classifier is False:
        return "regression"
    objective = objective or "reg:squarederror"
    if objective.startswith("binary:"):
        return "binary"
    if objective.startswith("multi:"):
        return "multiclass"
    if objective.startswith(("rank:", "survival:")):
        raise TrainingError("unsupported_model", f"objective {objective!r} is not supported remotely")
    return "regression"


def _scalar_params(params: dict) -> dict:
    clean = {}
    for key, value in params.items():
        if key in _DROPPED_PARAMS or value is None:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, _SCALARS):
            raise TrainingError("unsupported_model", f"parameter {key!r} must be a plain number or string")
        clean[key] = value
    return clean


def _booster_params(booster: xgb.Booster) -> dict:
    config = json.loads(booster.save_config())
    learner = config["learner"]
    objective = learner["objective"]["name"]
    params: dict = {"objective": objective}
    tree = learner.get("gradient_booster", {}).get("tree_train_param", {})
    for key in ("max_depth", "eta", "min_child_weight", "subsample", "reg_lambda", "reg_alpha", "max_bin"):
        if key in tree:
            params[key] = float(tree[key]) if "." in str(tree[key]) else int(tree[key])
    if objective.startswith("multi:"):
        params["num_class"] = int(learner["learner_model_param"]["num_class"])
    return params


def make_plan(model: object, default_rounds: int = 10, custom_code: bool = False) -> Plan:
    """The canonical form of a decoded model; a model whose decoded state is incomplete (built by
    NEWOBJ without state, or with state of the wrong shape) is refused as invalid. Only an
    owner-approved payload (`custom_code`) may bring a custom objective or metric function."""
    try:
        return _make_plan(model, default_rounds, custom_code)
    except TrainingError:
        raise
    except (AttributeError, TypeError, ValueError, KeyError, IndexError, xgb.core.XGBoostError) as exc:
        raise TrainingError("invalid_model", "the model's decoded state is incomplete or corrupt") from exc


def _custom_functions(plan: Plan, raw: dict, custom_code: bool) -> None:
    objective, metric = raw.get("objective"), raw.get("eval_metric")
    if not (callable(objective) or callable(metric)):
        return
    if not custom_code:
        raise TrainingError("custom_code_refused", "custom objective and metric functions need approval")
    from xgboost.sklearn import _metric_decorator, _objective_decorator

    plan.obj = _objective_decorator(objective) if callable(objective) else None
    plan.custom_metric = _metric_decorator(metric) if callable(metric) else None


def _make_plan(model: object, default_rounds: int = 10, custom_code: bool = False) -> Plan:
    if isinstance(model, Pipeline):
        steps = model.steps
        if not steps or not isinstance(steps[-1][1], (xgb.XGBClassifier, xgb.XGBRegressor)):
            raise TrainingError(
                "unsupported_model", "a Pipeline must end in an XGBClassifier or an XGBRegressor"
            )
        plan = _make_plan(steps[-1][1], default_rounds, custom_code)
        front = Pipeline(steps[:-1]) if len(steps) > 1 else None
        if front is not None:
            plan.preprocess = canonical_step(front)
            plan.preprocess["params"]["memory"] = _canonical_value("Pipeline", "memory", model.memory)
        return plan
    if isinstance(model, (xgb.XGBClassifier, xgb.XGBRegressor)):
        try:
            base = model.get_booster()
        except Exception:  # noqa: BLE001 - an unfitted estimator raises NotFitted
            base = None
        raw = model.get_params()
        rounds = int(raw.get("n_estimators") or 100)
        params = _scalar_params(model.get_xgb_params())
        classifier = isinstance(model, xgb.XGBClassifier)
        task = _task_of(params.get("objective"), classifier)
        plan = Plan(params=params, rounds=rounds, base=base, task=task)
        _custom_functions(plan, raw, custom_code)
        return plan
    if isinstance(model, xgb.Booster):
        params = _booster_params(model)
        return Plan(
            params=params, rounds=default_rounds, base=model, task=_task_of(params["objective"], None)
        )
    if isinstance(model, dict):
        params = model.get("params")
        if not isinstance(params, dict):
            raise TrainingError("unsupported_model", "'params' must be a dict of XGBoost parameters")
        booster = model.get("booster")
        if booster is not None and not isinstance(booster, xgb.Booster):
            raise TrainingError("unsupported_model", "'booster' must be an xgboost.Booster or None")
        rounds = model.get("num_boost_round", default_rounds)
        if not isinstance(rounds, int) or isinstance(rounds, bool):
            raise TrainingError("unsupported_model", "'num_boost_round' must be an integer")
        params = _scalar_params(params)
        return Plan(params=params, rounds=rounds, base=booster, task=_task_of(params.get("objective"), None))
    raise TrainingError("unsupported_model", "the model is not a supported XGBoost model")


def check_bounds(plan: Plan, policy: dict, threads: int) -> None:
    """Refuse parameters beyond the policy's bounds, naming the parameter and its bound."""
    if plan.preprocess is not None:
        _check_step_bounds(plan.preprocess)
    params = plan.params
    checks = [
        ("n_estimators", plan.rounds, policy["max_n_estimators"]),
        ("max_depth", params.get("max_depth") or 0, policy["max_depth"]),
        ("max_bin", params.get("max_bin") or 0, policy["max_bin"]),
    ]
    for name, value, bound in checks:
        if not isinstance(value, (int, float)) or value > bound:
            raise TrainingError(
                "parameter_out_of_bounds", f"{name} = {value} exceeds this server's bound of {bound}"
            )
    if plan.rounds < 0:
        raise TrainingError("parameter_out_of_bounds", "n_estimators must not be negative")
    for key in ("nthread", "n_jobs"):
        value = params.get(key)
        if value is not None and (not isinstance(value, int) or value > threads):
            raise TrainingError(
                "parameter_out_of_bounds", f"{key} = {value} exceeds this server's bound of {threads}"
            )
    device = str(params.get("device") or "cpu")
    if device != "cpu":
        raise TrainingError(
            "parameter_out_of_bounds", f"device = {device!r} is not available; this server allows 'cpu'"
        )
    if params.get("tree_method") not in (None, "hist", "approx", "exact", "auto"):
        raise TrainingError("parameter_out_of_bounds", "tree_method must be hist, approx, exact or auto")


def encode_labels(staged: Staged, task: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels as numbers; classes are the sorted distinct values, named by their text."""
    y_train, y_eval = staged.train[staged.label], staged.eval[staged.label]
    if task == "regression":
        try:
            return y_train.to_numpy(dtype=float), y_eval.to_numpy(dtype=float), []
        except (TypeError, ValueError) as exc:
            raise TrainingError("invalid_spec", f"label {staged.label!r} is not numeric") from exc
    both = pd.concat([y_train, y_eval])
    if both.isna().any():
        raise TrainingError("invalid_spec", f"label {staged.label!r} has missing values in the admitted rows")
    classes = sorted(both.unique().tolist(), key=lambda v: (str(type(v)), v))
    index = {value: i for i, value in enumerate(classes)}
    return (
        y_train.map(index).to_numpy(dtype=int),
        y_eval.map(index).to_numpy(dtype=int),
        [str(c) for c in classes],
    )


def finalize_params(plan: Plan, n_classes: int, threads: int) -> dict:
    params = dict(plan.params)
    params.pop("n_estimators", None)
    params.pop("n_jobs", None)
    params["nthread"] = min(int(params.get("nthread") or threads), threads)
    params["device"] = "cpu"
    if plan.task == "classification":
        if n_classes > 2:
            params["objective"] = "multi:softprob"
            params["num_class"] = n_classes
        elif not str(params.get("objective", "")).startswith("binary:"):
            params["objective"] = "binary:logistic"
        plan.task = "multiclass" if n_classes > 2 else "binary"
    return params


class _Progress(xgb.callback.TrainingCallback):
    def __init__(self, report: Callable[[int, dict], None], base_rounds: int):
        super().__init__()
        self.report = report
        self.base_rounds = base_rounds
        self.last = 0.0

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        now = time.monotonic()
        if now - self.last >= 0.2:
            self.last = now
            latest = {
                split: {m: vals[-1] for m, vals in by_metric.items()}
                for split, by_metric in evals_log.items()
            }
            self.report(epoch - self.base_rounds + 1, latest)
        return False


@contextlib.contextmanager
def _xgboost_errors() -> Iterator[None]:
    """XGBoost's failures as fixed codes: allocation failures are out of memory, the rest a refusal.
    The text goes to the server log only."""
    try:
        yield
    except xgb.core.XGBoostError as exc:
        logging.getLogger("remote_magic_server.worker").warning(
            "xgboost failed: %s", str(exc).splitlines()[0][:300]
        )
        if any(sign in str(exc).lower() for sign in _MEMORY_SIGNS):
            raise MemoryError("XGBoost ran out of memory") from exc
        raise TrainingError(
            "training_failed",
            "XGBoost refused the model and data; check that the base model's features and "
            "objective match the spec",
        ) from exc


def train(
    plan: Plan,
    staged: Staged,
    threads: int,
    report: Callable[[int, dict], None],
) -> tuple[xgb.Booster, dict, list[str], xgb.DMatrix, np.ndarray]:
    """Continue training the plan's base model on the staged rows; return the booster and history."""
    y_train, y_eval, classes = encode_labels(staged, plan.task)
    params = finalize_params(plan, len(classes), threads)
    history: dict = {}
    base_rounds = plan.base.num_boosted_rounds() if plan.base is not None else 0
    with _xgboost_errors():
        if plan.preprocess is not None:
            dtrain, deval = _preprocessed(plan, staged, y_train, y_eval, threads)
        else:
            dtrain = xgb.DMatrix(
                staged.train[staged.features], label=y_train, enable_categorical=True, nthread=threads
            )
            deval = xgb.DMatrix(
                staged.eval[staged.features], label=y_eval, enable_categorical=True, nthread=threads
            )
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=plan.rounds,
            evals=[(dtrain, "train"), (deval, "eval")],
            evals_result=history,
            xgb_model=plan.base,
            obj=plan.obj,
            custom_metric=plan.custom_metric,
            verbose_eval=False,
            callbacks=[_Progress(report, base_rounds)],
        )
    return booster, history, classes, deval, y_eval


def _feature_name(name: str) -> str:
    return "".join("_" if ch in "[]<," else ch for ch in str(name))


def _preprocessed(
    plan: Plan, staged: Staged, y_train: np.ndarray, y_eval: np.ndarray, threads: int
) -> tuple[xgb.DMatrix, xgb.DMatrix]:
    """Refit the pipeline's preprocessors on the training rows; transform both splits."""
    front = rebuild_step(plan.preprocess)  # type: ignore[arg-type]
    try:
        x_train = front.fit_transform(staged.train[staged.features])  # type: ignore[attr-defined]
        x_eval = front.transform(staged.eval[staged.features])  # type: ignore[attr-defined]
        names = [_feature_name(n) for n in front.get_feature_names_out()]  # type: ignore[attr-defined]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise TrainingError(
            "preprocessing_failed",
            "the pipeline's preprocessors could not be fitted on the admitted rows; check the columns "
            "each step receives",
        ) from exc
    if plan.base is not None and plan.base.feature_names and len(plan.base.feature_names) == len(names):
        names = list(plan.base.feature_names)
    dtrain = xgb.DMatrix(x_train, label=y_train, feature_names=names, nthread=threads)
    deval = xgb.DMatrix(x_eval, label=y_eval, feature_names=names, nthread=threads)
    return dtrain, deval


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else float("nan")


def evaluate(booster: xgb.Booster, deval: xgb.DMatrix, y: np.ndarray, task: str, n_classes: int) -> dict:
    """Raw metrics and confusion matrix on the evaluation rows (sklearn.metrics)."""
    pred = booster.predict(deval)
    out: dict = {}
    if task == "regression":
        out["metrics"] = {
            "rmse": _finite(math.sqrt(skm.mean_squared_error(y, pred))),
            "mae": _finite(skm.mean_absolute_error(y, pred)),
            "r2": _finite(skm.r2_score(y, pred)),
        }
        return out
    if task == "binary":
        prob = pred if pred.ndim == 1 else pred[:, 1]
        labels_pred = (prob >= 0.5).astype(int)
        out["metrics"] = {
            "auc": _finite(skm.roc_auc_score(y, prob)),
            "log_loss": _finite(skm.log_loss(y, np.clip(prob, 1e-15, 1 - 1e-15), labels=[0, 1])),
            "accuracy": _finite(skm.accuracy_score(y, labels_pred)),
            "f1": _finite(skm.f1_score(y, labels_pred, zero_division=0)),
        }
    else:
        prob = pred.reshape(len(y), n_classes)
        labels_pred = prob.argmax(axis=1)
        out["metrics"] = {
            "log_loss": _finite(skm.log_loss(y, prob, labels=list(range(n_classes)))),
            "accuracy": _finite(skm.accuracy_score(y, labels_pred)),
            "f1_macro": _finite(skm.f1_score(y, labels_pred, average="macro", zero_division=0)),
        }
    out["confusion"] = skm.confusion_matrix(y, labels_pred, labels=list(range(max(n_classes, 2)))).tolist()
    return out
