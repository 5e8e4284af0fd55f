"""What the trusted parent needs to decide a release, besides the aggregates themselves.

The admitted row sets go to the job folder as serialized roaring bitmaps of file row numbers (the pipe
carries JSON, and a set of millions of rows does not belong in it); the parent reads them for the
differencing guard. Leaf populations are counted here, on the training rows, because only the worker
holds them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import xgboost as xgb
from pyroaring import BitMap


def table_rows(path: str) -> int:
    """Rows in the whole table, from the Parquet footer."""
    return pq.read_metadata(path).num_rows


def write_row_sets(job_dir: Path, sets: dict[str, np.ndarray]) -> dict[str, str]:
    """Serialize each set next to the job and return the file names, by role."""
    names = {}
    for role, rows in sets.items():
        name = f"rows-{role}.roaring"
        (job_dir / name).write_bytes(BitMap(rows.astype(np.uint32, copy=False)).serialize())
        names[role] = name
    return names


def smallest_leaf(booster: xgb.Booster, dtrain: xgb.DMatrix, first_round: int) -> int | None:
    """The fewest training rows that reach any leaf of the trees trained from `first_round` on."""
    total = booster.num_boosted_rounds()
    if total <= first_round or dtrain.num_row() == 0:
        return None
    leaves = booster.predict(dtrain, pred_leaf=True, iteration_range=(first_round, total))
    leaves = leaves.reshape(dtrain.num_row(), -1)
    return int(min(np.unique(leaves[:, t], return_counts=True)[1].min() for t in range(leaves.shape[1])))


def model_facts(
    params: dict, booster: xgb.Booster, dtrain: xgb.DMatrix, first_round: int, categorical: bool
) -> dict:
    """The numbers the model-release rules read: leaf populations, hyperparameters, categorical input."""
    return {
        "categorical": categorical,
        "min_leaf_rows": smallest_leaf(booster, dtrain, first_round),
        "max_depth": params.get("max_depth") if params.get("max_depth") is not None else 6,
        "n_estimators": booster.num_boosted_rounds() - first_round,
        "min_child_weight": params.get("min_child_weight")
        if params.get("min_child_weight") is not None
        else 1.0,
    }
