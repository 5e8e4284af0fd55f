"""The noise the DP trainer would add per leaf for a model, said before the job runs.

The server prices a train job without its model (`POST /v1/cost` reads no model bytes) and says the DP
trainer's share of the cost, `rho_train`. What that share buys per leaf depends on the model's rounds and
objective (and a regression label's declared range, a label's declared classes, which the catalog
shows), so it is worked out here from the model, by the DP trainer's own code: its family's canonical
form (`dpboost.family`), its settings for that plan (`settings_for`) and its noise scales
(`Settings.scales`), the functions the trainer runs on the server, not a copy of them. A model that
leaves its rounds unset gets them from the row count the training releases: the most it may take is
shown, and said.
"""

from __future__ import annotations

import math

from ..contract.codes import Refusal
from ..contract.wire import DPTraining
from ..families import family as family_named
from ..families.dpboost.accounting import epsilon
from ..families.dpboost.family import settings_for
from ..families.dpboost.settings import DEFAULT_ROUNDS


def expected_training(
    model: object,
    rho_train: float,
    delta: float,
    label_range: tuple[float, float] | None = None,
    classes: int | None = None,
) -> tuple[DPTraining | None, str]:
    """The DP trainer's trees and noise per leaf for `model` at `rho_train`, or None and why not;
    `label_range` and `classes` are the owner's public declarations of the label, which a regression's
    and a multiclass label's noise depend on."""
    try:
        plan = family_named("dpboost").canonical(model)
        settings = settings_for(plan, classes, label_range)
        scales = settings.scales(rho_train, continuing=plan.base is not None)
    except Refusal as refusal:
        if refusal.code == "unsupported_model":  # a regression's label range, a multiclass label's classes
            return None, f"the noise per leaf is not shown here: {refusal.message}"
        raise  # what the server would refuse at submission, refused here as it would be
    # The most rounds are the large sample's, whose trees also recentre (`Settings.for_count`).
    sigma_g, sigma_h = settings.for_count(math.inf, rho_train).leaf_sigmas(scales)
    training = DPTraining(
        rho=rho_train,
        epsilon=round(epsilon(rho_train, delta), 4),
        trees=settings.rounds * settings.objective_().trees_per_round,
        sigma_gradient=sigma_g,
        sigma_hessian=sigma_h,
    )
    note = (
        f"n_estimators is unset: the trainer takes {DEFAULT_ROUNDS} rounds, or {settings.rounds} where the "
        "row count its intercept releases says the sample is large (the cost is the same); the trees and "
        f"noise shown are for {settings.rounds} rounds, the most"
        if plan.rounds_unset and settings.waits_for_count(plan.base is not None)
        else ""
    )
    return training, note
