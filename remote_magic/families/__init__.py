"""Model families: what a submitted model may be, and the code that trains and scores each kind.

This package's top level is light (names only, no XGBoost import), because the server's API process
needs the allowlist of classes a payload may build without importing any model library. Each family's
code lives in its own module and is imported where models are handled: in the sandboxed worker, and in
the client's dry run, which runs the very same code on mock rows.

To add a family: write a folder with a module whose `FAMILY` satisfies `base.ModelFamily` and a light
module (no model library) for the API process, give it a `Manifest` here (the classes its payloads may
contain, what a payload of it is called, its two modules) and add it to `MANIFESTS`; its model-release
rule goes in the server's privacy/model_release.py. docs/architecture.md lists every file.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import ModelFamily


MODEL_FILE = "model.json"  # a trained model in the job folder, in its family's saved form (`export`)
PARAMS_FILE = "params.json"  # the parameters it was trained with


@dataclass(frozen=True)
class Manifest:
    """A family: its allowlist, as exact `module.name` strings of the classes its payloads may build;
    `module`, its code (which imports the model library), where `FAMILY` is; `light`, what the API
    process may import of it: `check_stated(estimator, params, rounds, bounds)`, the bounds a payload's
    stated parameters must keep, `plan_of_scan(estimator, params, rounds)`, the plan (and so the task)
    they state, and `is_saved(data)`, whether bytes are a model it saved (`export`).
    `params_dict`: a dict of parameters (`{'params': ..., 'num_boost_round': ...}`) is this family's."""

    name: str
    module: str
    light: str
    classes: frozenset[str]
    top_level: Mapping[str, str] = field(default_factory=dict)
    params_dict: bool = False


XGBOOST = Manifest(
    name="xgboost",
    module="remote_magic.families.xgboost.family",
    light="remote_magic.families.xgboost.bounds",
    params_dict=True,
    classes=frozenset(
        {"xgboost.sklearn.XGBClassifier", "xgboost.sklearn.XGBRegressor", "xgboost.core.Booster"}
    ),
    top_level={
        "xgboost.sklearn.XGBClassifier": "XGBClassifier",
        "xgboost.sklearn.XGBRegressor": "XGBRegressor",
        "xgboost.core.Booster": "Booster",
    },
)

# The DP trainer (issue 20): no payload class of its own. A train job in mode dp decodes its XGBoost
# estimator with the XGBoost family and trains it with this one (`dpboost/family.py`); its models are
# XGBoost JSON, so the XGBoost family's light half recognises them.
DPBOOST = Manifest(
    name="dpboost",
    module="remote_magic.families.dpboost.family",
    light="remote_magic.families.xgboost.bounds",
    classes=frozenset(),
)

# scikit-learn preprocessors may stand in front of a family's estimator in a Pipeline.
PIPELINE = "sklearn.pipeline.Pipeline"
PREPROCESSORS: frozenset[str] = frozenset(
    {
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._data.MinMaxScaler",
        "sklearn.impute._base.SimpleImputer",
        "sklearn.preprocessing._encoders.OneHotEncoder",
        "sklearn.preprocessing._encoders.OrdinalEncoder",
        "sklearn.compose._column_transformer.ColumnTransformer",
    }
)

MANIFESTS: tuple[Manifest, ...] = (XGBOOST, DPBOOST)

WHAT_A_MODEL_MAY_BE = (
    "an XGBoost classifier or regressor (XGBClassifier, XGBRegressor), a Booster, a dict "
    "{'params': {...}, 'num_boost_round': N, 'booster': Booster | None}, or a scikit-learn Pipeline of "
    "StandardScaler, MinMaxScaler, SimpleImputer, OneHotEncoder, OrdinalEncoder or ColumnTransformer "
    "ending in an XGBClassifier or XGBRegressor"
)


def model_classes() -> frozenset[str]:
    """Every class a payload may build, across families and preprocessors."""
    classes: set[str] = set(PREPROCESSORS) | {PIPELINE}
    for manifest in MANIFESTS:
        classes |= manifest.classes
    return frozenset(classes)


def top_level_names() -> dict[str, str]:
    """The classes a payload may be at its top level, with the name shown for each."""
    names = {PIPELINE: "Pipeline"}
    for manifest in MANIFESTS:
        names.update(manifest.top_level)
    return names


def manifest_of(class_path: str | None = None, params_dict: bool = False) -> Manifest | None:
    """The family a payload's top-level class (or a dict of parameters) belongs to."""
    return next((m for m in MANIFESTS if (params_dict and m.params_dict) or class_path in m.classes), None)


def light(name: str) -> ModuleType:
    """A family's light half (no model library): stated-parameter bounds, saved-model recognition."""
    return importlib.import_module(next(m for m in MANIFESTS if m.name == name).light)


def family_of_saved(data: bytes) -> str | None:
    """The family that saved these model bytes (a registered version, a cluster's base model); None
    when none did."""
    return next((m.name for m in MANIFESTS if importlib.import_module(m.light).is_saved(data)), None)


def saved_by(name: str, data: bytes) -> bool:
    """Whether the family of this name reads these bytes as a model it saves (the DP trainer saves
    XGBoost's format, so both families read the same bytes)."""
    manifest = next(m for m in MANIFESTS if m.name == name)
    return bool(importlib.import_module(manifest.light).is_saved(data))


def family(name: str) -> ModelFamily:
    """The family of this name (imports its module)."""
    manifest = next(m for m in MANIFESTS if m.name == name)
    return importlib.import_module(manifest.module).FAMILY


def family_for(model: object) -> ModelFamily:
    """The family that recognises a decoded model; raise Refusal('unsupported_model') if none does."""
    from ..contract.codes import Refusal

    for manifest in MANIFESTS:
        candidate = family(manifest.name)
        if candidate.recognises(model):
            return candidate
    raise Refusal("unsupported_model", f"the model must be {WHAT_A_MODEL_MAY_BE}")
