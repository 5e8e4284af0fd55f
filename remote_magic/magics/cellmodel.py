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


def bound_models(before: Mapping[str, object], after: Mapping[str, object], source: str) -> dict[str, object]:
    """The models the cell bound: names new or rebound since `before`, or assigned by `source`. A model
    that is a step of a bound Pipeline is part of it, not a second candidate."""
    assigned = assigned_names(source)
    bound = {
        name: value
        for name, value in after.items()
        if not name.startswith("_")
        and (name in assigned or before.get(name, _UNSET) is not value)
        and is_model(value)
    }
    inner = {id(step) for value in bound.values() for step in _steps(value)}
    return {name: value for name, value in bound.items() if id(value) not in inner}


def pick_model(bound: Mapping[str, object]) -> object:
    """The one model the cell bound; a UsageError that says what to do when there is none or several."""
    distinct = {id(value) for value in bound.values()}
    if len(distinct) == 1:
        return next(iter(bound.values()))
    if not bound:
        raise UsageError(
            f"the cell bound no model ({WHAT_A_MODEL_IS}): bind one in the cell, e.g. "
            "model = XGBClassifier(...), or name an existing variable with --model VAR"
        )
    names = ", ".join(sorted(bound))
    raise UsageError(f"the cell bound several models ({names}): name the one to send with --model VAR")
