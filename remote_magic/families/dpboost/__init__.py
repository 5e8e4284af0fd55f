"""A differentially private trainer of gradient-boosted trees that writes ordinary XGBoost models.

The recipe is Maddock et al.'s (CCS 2022, "Federated Boosted Decision Trees with Differential Privacy"):
split structure drawn at random from public split candidates, Newton leaf values from Gaussian-noised
sums of clipped per-row gradients and hessians, batched updates. The trainer has two halves so that the
same code runs on one machine, on a Dask cluster and across several data owners' servers:

- `Partition` (`partition.py`) runs where the rows are: it bins its rows once, keeps their margins, and
  answers each request with exact per-leaf sums that add up over partitions;
- `Coordinator` (`coordinator.py`) sees only those sums: it draws the structure, adds the noise through
  a callable it is given, computes the leaf values and writes the model (`booster.py`).

`candidates.py` makes the public split candidates (declared bounds and levels, or a charged DP sketch),
`accounting.py` holds the privacy proof and the zCDP accountant, `params.py` maps an XGBoost estimator's
parameters to the trainer's `Settings`. Nothing here imports the server.
"""

import importlib

# Each name from its module, imported when first used: the server's parent process reads the settings
# and the release schedule (`schedule.py`) to check a training's noise requests, and must not load
# XGBoost (booster.py) for that.
_HOME = {
    "BINARY": "objectives",
    "MULTICLASS": "objectives",
    "REGRESSION": "objectives",
    "Batch": "structure",
    "Column": "features",
    "Coordinator": "coordinator",
    "Features": "features",
    "Intercept": "partition",
    "InterceptUpdate": "partition",
    "LeafUpdate": "partition",
    "Objective": "objectives",
    "Partition": "partition",
    "Released": "coordinator",
    "Scales": "accounting",
    "Settings": "settings",
    "candidates_between": "features",
    "epsilon": "accounting",
    "local": "coordinator",
    "noise_scales": "accounting",
    "predict_margins": "booster",
    "rho_for_epsilon": "accounting",
    "total_rho": "accounting",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> object:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
