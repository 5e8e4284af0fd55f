"""An estimator's extra keywords, checked by XGBoost itself: a name it would not use is refused by name.

`XGBClassifier(n_estimator=7)` (the "s" missing) is accepted by the estimator, which hands keywords it
does not know to the booster; XGBoost then only warns "Parameters: { n_estimator } are not used" and
trains its 100 default rounds. Which names XGBoost uses depends on the booster and the objective, and
XGBoost publishes no list, so the parameters go to a throwaway booster on two rows and XGBoost's own
warning names those it would not use (a few milliseconds; only for an estimator with extra keywords,
and for a `params` dict, every name of which the analyst wrote). Where XGBoost cannot say (an objective
two rows do not fit), nothing is refused.
"""

from __future__ import annotations

import difflib
import re
import warnings

import numpy as np
import xgboost as xgb

from ...contract.codes import Refusal

_NOT_USED = re.compile(r"Parameters: \{(.*?)\} are not used", re.S)
# XGBoost's own names an estimator passes on as keywords, besides its `get_params()` names.
NATIVE_NAMES = (
    *("eta", "lambda", "alpha", "seed", "nthread", "num_class", "min_split_loss", "max_leaves"),
    *("max_depth", "subsample", "colsample_bytree", "min_child_weight", "objective", "eval_metric"),
)


def unused_names(params: dict, names: set[str]) -> list[str]:
    """Those of `names` (keys of `params`) that XGBoost would not use with these parameters, sorted."""
    params = {k: v for k, v in params.items() if v is not None}
    if not names or not isinstance(params.get("objective", ""), str):
        return []
    objective = str(params.get("objective", ""))
    if objective.startswith("multi:"):
        params.setdefault("num_class", 2)
    params.update(nthread=1, validate_parameters=True)
    params.pop("device", None)
    labels = [0.0, 1.0] if objective.startswith(("binary:", "multi:")) else [0.25, 0.75]
    rows = xgb.DMatrix(np.array([[0.0], [1.0]]), label=np.array(labels), nthread=1)
    try:
        with xgb.config_context(verbosity=1), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            xgb.train(params, rows, num_boost_round=1)
    except xgb.core.XGBoostError:
        return []
    said = " ".join(_NOT_USED.findall(" ".join(str(w.message) for w in caught)))
    return sorted(names & set(re.findall(r'"([^"]+)"', said)))


def check_known(params: dict, names: set[str], known: list[str]) -> None:
    """Refuse, by name and with the nearest of `known` (or XGBoost's common names), those of `names`
    XGBoost would silently not use."""
    unused = unused_names(params, names)
    if not unused:
        return
    known = [k for k in known if k not in unused] + list(NATIVE_NAMES)
    named = []
    for name in unused:
        near = difflib.get_close_matches(name, known, n=1)
        named.append(f"{name} (did you mean {near[0]}?)" if near else name)
    raise Refusal(
        "parameter_out_of_bounds",
        f"XGBoost does not use the parameter{'s' if len(unused) > 1 else ''} {', '.join(named)}: it would "
        "train as if it were not given; correct or remove it",
    )


def check_estimator(model: xgb.XGBModel) -> None:
    """`check_known` for the keywords an estimator passes on to XGBoost (`model.kwargs`)."""
    extra = {k for k, v in (getattr(model, "kwargs", None) or {}).items() if v is not None}
    if extra:
        check_known(model.get_xgb_params(), extra, [k for k in model.get_params() if k not in extra])
