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

from .accounting import Scales, epsilon, noise_scales, rho_for_epsilon, total_rho
from .booster import predict_margins
from .coordinator import Coordinator, Released, local
from .features import Column, Features, candidates_between
from .objectives import BINARY, MULTICLASS, REGRESSION, Objective
from .partition import Intercept, InterceptUpdate, LeafUpdate, Partition
from .settings import Settings
from .structure import Batch

__all__ = [
    "BINARY",
    "MULTICLASS",
    "REGRESSION",
    "Batch",
    "Column",
    "Coordinator",
    "Features",
    "Intercept",
    "InterceptUpdate",
    "LeafUpdate",
    "Objective",
    "Partition",
    "Released",
    "Scales",
    "Settings",
    "candidates_between",
    "epsilon",
    "local",
    "noise_scales",
    "predict_margins",
    "rho_for_epsilon",
    "total_rho",
]
