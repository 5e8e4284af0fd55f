"""Which model a `%%remote_train` cell means: the one the cell itself bound.

The magic runs the cell, then compares the namespace before and after it. A model left over from an
earlier cell is never sent by default: a cell that defines `clf = XGBClassifier(...)` while `model` still
holds an estimator from an hour ago must not train the old one. `--model VAR` names a variable
explicitly, bound in the cell or not.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Mapping

from IPython.core.error import UsageError

_UNSET = object()
WHAT_A_MODEL_IS = "an XGBoost estimator, a Booster, a scikit-learn Pipeline or a {'params': ...} dict"


def is_model(value: object) -> bool:
    """Whether `value` is something the server may train. A module nobody imported cannot have made it,
    so this never imports xgboost or scikit-learn itself."""
    if isinstance(value, dict):
        return "params" in value
    xgb = sys.modules.get("xgboost")
    if xgb is not None and isinstance(value, xgb.XGBModel | xgb.Booster):
        return True
    pipeline = sys.modules.get("sklearn.pipeline")
    return pipeline is not None and isinstance(value, pipeline.Pipeline)


def assigned_names(source: str) -> set[str]:
    """Names the cell's code assigns at its own level (not inside functions or classes), so a re-run
    cell that binds the same object again still counts as binding it."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names: set[str] = set()
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return names


def _steps(value: object) -> list[object]:
    steps = getattr(value, "steps", None)
    return [step for _, step in steps] if isinstance(steps, list) else []


def is_estimator(value: object) -> bool:
    """Whether `value` looks like a model of some library (it fits and predicts), known here or not."""
    return not isinstance(value, type) and all(callable(getattr(value, m, None)) for m in ("fit", "predict"))


def bound_values(before: Mapping[str, object], after: Mapping[str, object], source: str) -> dict[str, object]:
    """Everything the cell bound: names new or rebound since `before`, or assigned by `source`."""
    assigned = assigned_names(source)
    return {
        name: value
        for name, value in after.items()
        if not name.startswith("_") and (name in assigned or before.get(name, _UNSET) is not value)
    }


def bound_models(bound_by_cell: Mapping[str, object]) -> dict[str, object]:
    """The models among what a cell bound. A model that is a step of a bound Pipeline is part of it, not
    a second candidate."""
    bound = {name: value for name, value in bound_by_cell.items() if is_model(value)}
    inner = {id(step) for value in bound.values() for step in _steps(value)}
    return {name: value for name, value in bound.items() if id(value) not in inner}


def foreign_models(bound: Mapping[str, object]) -> dict[str, object]:
    """The values a cell bound that are models of a library no model family knows (a random forest)."""
    return {name: value for name, value in bound.items() if is_estimator(value) and not is_model(value)}


def pick_model(bound: Mapping[str, object], foreign: Mapping[str, object] | None = None) -> object:
    """The one model the cell bound; a UsageError that says what to do when there is none or several,
    naming a model the cell bound that no family knows."""
    distinct = {id(value) for value in bound.values()}
    if len(distinct) == 1:
        return next(iter(bound.values()))
    if not bound and foreign:
        name, value = next(iter(sorted(foreign.items())))
        kind = type(value)
        raise UsageError(
            f"{name} is a {kind.__name__} ({kind.__module__.split('.')[0]}), which no model family on the "
            f"server knows: send {WHAT_A_MODEL_IS}"
        )
    if not bound:
        raise UsageError(
            f"the cell bound no model ({WHAT_A_MODEL_IS}): bind one in the cell, e.g. "
            "model = XGBClassifier(...), or name an existing variable with --model VAR"
        )
    names = ", ".join(sorted(bound))
    raise UsageError(f"the cell bound several models ({names}): name the one to send with --model VAR")
