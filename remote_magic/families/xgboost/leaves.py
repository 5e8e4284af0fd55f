"""A model's leaf values, checked before any row is read.

A NaN leaf (or an infinite one, or two whose sum overflows) makes the predictions of exactly the rows
that reach it NaN. Whatever is computed from those rows then fails or is NaN, and in a mode-dp release
that failure says, through any noise, whether any row reached that leaf: a crafted model asks whether
one person is in the table. The check reads the model only, so its answer is public.
"""

from __future__ import annotations

import json

import numpy as np
import xgboost as xgb

from ...contract.codes import Refusal

# The largest leaf an analyst's XGBoost model may hold: no sum of such leaves over any number of trees a
# server allows reaches float32's largest value (3.4e38), where XGBoost's margins would overflow.
MARGIN_LEAF_LIMIT = 1e30


def check_leaves(data: dict, limit: float) -> None:
    """Refuse an XGBoost JSON model whose leaf or base score is not a finite number within `limit`."""
    learner = data["learner"]
    for tree in learner["gradient_booster"]["model"]["trees"]:
        leaf = np.asarray(tree["left_children"]) == -1
        values = np.asarray(tree["split_conditions"], dtype=np.float64)[leaf]
        if not np.all(np.abs(values) <= limit):  # NaN fails too
            raise Refusal("invalid_model", f"a model's leaf values must be finite, within {limit:g}")
    score = str(learner["learner_model_param"].get("base_score", "0")).strip("[]")
    if not np.all(np.isfinite([float(v) for v in score.split(",") if v.strip()])):
        raise Refusal("invalid_model", "a model's base_score must be a finite number")


def check_booster(raw: bytes | bytearray, limit: float) -> None:
    """`check_leaves` of a booster in any format XGBoost loads (its JSON, read as XGBoost writes it)."""
    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    check_leaves(json.loads(booster.save_raw("json")), limit)
