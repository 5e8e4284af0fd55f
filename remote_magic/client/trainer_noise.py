"""The noise the DP trainer would add per leaf for a model, said before the job runs.

The server prices a train job without its model (`POST /v1/cost` reads no model bytes) and says the DP
trainer's share of the cost, `rho_train`. What that share buys per leaf depends on the model's rounds and
objective, so it is worked out here from the model's own parameters, by the DP trainer's own mapping
(`dpboost.params.settings_from_params`) and its own scales (`Settings.scales`): the functions the trainer
runs on the server, not a copy of them.
"""

from __future__ import annotations

from ..contract.codes import Refusal
from ..contract.wire import DPTraining
from ..families import family_for
from ..families.base import is_classifier_task
from ..families.dpboost.accounting import epsilon
from ..families.dpboost.params import settings_from_params


def expected_training(model: object, rho_train: float, delta: float) -> tuple[DPTraining | None, str]:
    """The DP trainer's trees and noise per leaf for `model` at `rho_train`, or None and why not."""
    try:
        plan = family_for(model).canonical(model)
        # The trainer's settings for a plan: its parameters by name, its rounds (as the trainer's own
        # `settings_for` takes them on the server).
        classifier = True if is_classifier_task(plan.task) else False if plan.task == "regression" else None
        settings = settings_from_params({**plan.params, "n_estimators": plan.rounds}, classifier)
        scales = settings.scales(rho_train, continuing=plan.base is not None)
    except Refusal as refusal:
        if refusal.code == "unsupported_model":  # a regression's label range, a multiclass label's classes
            return None, f"the noise per leaf is not shown here: {refusal.message}"
        return None, f"the DP trainer would refuse this model: {refusal.message}"
    training = DPTraining(
        rho=rho_train,
        epsilon=round(epsilon(rho_train, delta), 4),
        trees=settings.rounds * settings.objective_().trees_per_round,
        sigma_gradient=scales.sigma_g,
        sigma_hessian=scales.sigma_h,
    )
    return training, ""
