"""scikit-learn preprocessors in front of a family's estimator: canonical form, bounds, rebuild, refit.

Only a Pipeline's preprocessor *parameters* cross the boundary: a step becomes its class name and its
parameters as JSON data, and trusted code rebuilds a fresh, unfitted step from that and refits it on the
admitted training rows (what it learned in the notebook, on other data, is dropped).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler

from ..contract.codes import Refusal

_SCALARS = (str, int, float, bool, type(None))
_STEPS = {
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


def canonical_value(owner: str, key: str, value: object) -> object:
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
        return {"slice": [canonical_value(owner, key, v) for v in (value.start, value.stop, value.step)]}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufUO" and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [canonical_value(owner, key, v) for v in value]
    raise Refusal(
        "unsupported_model", f"{owner} parameter {key!r} has a value of a type that is not supported remotely"
    )


def canonical_step(step: object) -> dict:
    """The canonical form of an allowed preprocessor: its class name and its parameters as JSON data."""
    name = type(step).__name__
    if _STEPS.get(name) is not type(step):
        raise Refusal("unsupported_model", f"{name} is not a supported pipeline step")
    params = step.get_params(deep=False)  # type: ignore[attr-defined]
    return {"class": name, "params": {k: canonical_value(name, k, v) for k, v in sorted(params.items())}}


def canonical_front(pipeline: Pipeline) -> dict | None:
    """A Pipeline's steps before its estimator, as one canonical Pipeline (None when there are none)."""
    if len(pipeline.steps) < 2:
        return None
    front = canonical_step(Pipeline(pipeline.steps[:-1]))
    front["params"]["memory"] = canonical_value("Pipeline", "memory", pipeline.memory)
    return front


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
    cls = _STEPS[canonical["class"]]
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


def check_bounds(canonical: dict) -> None:
    """No caching to disk and no parallel jobs in a step: the worker owns its files and its threads."""
    params = canonical["params"]
    if canonical["class"] == "Pipeline" and params.get("memory") is not None:
        raise Refusal("parameter_out_of_bounds", "Pipeline memory must be None on this server")
    n_jobs = params.get("n_jobs")
    if n_jobs not in (None, 1):
        raise Refusal(
            "parameter_out_of_bounds",
            f"{canonical['class']} n_jobs = {n_jobs} exceeds this server's bound of 1",
        )
    for value in params.values():
        for item in value if isinstance(value, list) else [value]:
            for nested in item if isinstance(item, list) else [item]:
                if isinstance(nested, dict) and "class" in nested:
                    check_bounds(nested)


def _feature_name(name: str) -> str:
    return "".join("_" if ch in "[]<," else ch for ch in str(name))


def fit_transform(
    canonical: dict, x_train: pd.DataFrame, x_eval: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, list[str], object]:
    """Refit the rebuilt preprocessors on the training rows; transform both splits; name the outputs.
    The fitted front is returned too, to transform other rows the same way."""
    front = rebuild_step(canonical)
    try:
        train = front.fit_transform(x_train)  # type: ignore[attr-defined]
        evaluation = front.transform(x_eval)  # type: ignore[attr-defined]
        names = [_feature_name(n) for n in front.get_feature_names_out()]  # type: ignore[attr-defined]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise Refusal(
            "preprocessing_failed",
            "the pipeline's preprocessors could not be fitted on the admitted rows; check the columns "
            "each step receives",
        ) from exc
    return train, evaluation, names, front


def transform(front: object, x: pd.DataFrame) -> np.ndarray:
    """Rows through an already fitted front, as `fit_transform` sent the evaluation rows."""
    try:
        return front.transform(x)  # type: ignore[attr-defined]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise Refusal(
            "preprocessing_failed", "the pipeline's preprocessors could not transform the rows"
        ) from exc
